/*
 * crc32c.h - CRC-32C (Castagnoli), the checksum of the journal's records.
 * Stored on disk, so a wire format: fixed polynomial, golden vectors in
 * tests/unit/test_journal.c.
 */
#ifndef SPI_CRC32C_H
#define SPI_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C (reflected polynomial 0x82F63B78), as in iSCSI and ext4: crc is 0
 * for a fresh checksum, or a previous result to continue one.
 * spi__crc32c(0, "123456789", 9) == 0xE3069283. */
uint32_t spi__crc32c(uint32_t crc, const void *data, size_t n);

#endif /* SPI_CRC32C_H */
