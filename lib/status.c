/*
 * status.c - text for every status code.
 */
#include "spi_internal.h"

const char *spi_strerror(int status) {
  switch (status) {
  case SPI_OK: return "ok";
  case SPI_EINVAL: return "invalid argument";
  case SPI_EMISUSE: return "library misuse (bad handle or reentrant call)";
  case SPI_ERANGE: return "value out of range";
  case SPI_EBUFSIZE: return "output buffer too small";
  case SPI_EPARSE: return "malformed input";
  case SPI_ETYPE: return "wrong type";
  case SPI_EUNKNOWN: return "unknown key or name";
  case SPI_EMISSING: return "required field missing";
  case SPI_ETOOBIG: return "input exceeds a configured limit";
  case SPI_ENOMEM: return "out of memory";
  case SPI_EIO: return "i/o error";
  case SPI_ENOTFOUND: return "not found";
  case SPI_EEXIST: return "already exists";
  case SPI_ESTALE: return "stale ticket or replica";
  case SPI_EFULL: return "table full";
  case SPI_EMODULE: return "module failed";
  case SPI_EABI: return "unsupported module ABI";
  case SPI_ENOTSUP: return "not supported";
  case SPI_ESHED: return "shed under pressure, retry later";
  case SPI_ENOCAPACITY: return "no capacity";
  default: return "unknown status";
  }
}
