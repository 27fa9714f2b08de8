/*
 * memfs.h - a small in-memory file system for the journal fuzz target.
 *
 * Linked into a program with -Wl,--wrap=<call> for each file call the
 * journal makes (see tests/CMakeLists.txt), it serves every path under
 * MEMFS_ROOT and every descriptor it handed out from memory; every other
 * path, descriptor and directory stream goes to the real call unchanged,
 * so the same program still works on real directories. See memfs.c.
 */
#ifndef SPI_FUZZ_MEMFS_H
#define SPI_FUZZ_MEMFS_H

#include <stddef.h>

/* The mount point: a directory that always exists, empty after a reset. */
#define MEMFS_ROOT "/spi-memfs"

/* Descriptors and directory streams of the memory file system now open. */
int memfs_open_count(void);
/* Bytes held by its files. */
size_t memfs_bytes(void);
/* Drop every file and directory, close every descriptor. */
void memfs_reset(void);

#endif
