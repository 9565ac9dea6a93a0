/* The free IOVA space of an IOAS: the holes of (areas ∪ reserved ranges)
 * over [0, 2^64 - 1], for core/mm/iova.py's FreeSpace.
 *
 * A hole is an inclusive range [start, last] of IOVA (bytes). Holes are
 * disjoint and never adjacent (give() merges, take() splits). Each hole is
 * indexed by its last byte, both in one ordered map of all holes and in the
 * map of its size class (floor(log2(size)), 0..64; class 64 is only the whole
 * space as one hole), so that the automatic-IOVA allocator (whose alignment
 * rules stay in Python) visits only holes large enough, in address order.
 *
 * The maps are sorted arrays in blocks of up to IOFS_HOLES_BLK entries
 * (binary search over the blocks' last keys, then inside one block): every
 * operation is O(log n) searches plus a memmove of at most one block, with
 * a few cache lines touched, so map and unmap cost the same at 100 or 100 000
 * areas.
 *
 * Not thread-safe: core serialises every IOAS operation. Every int function
 * returns >= 0 or -errno; on -errno nothing changed. */
#ifndef IOFS_HOLES_H
#define IOFS_HOLES_H
#include <stdint.h>

#define IOFS_HOLES_BLK 64

struct iofs_holes;

/* A new set with one hole, [0, 2^64 - 1]. NULL on ENOMEM. */
struct iofs_holes *iofs_holes_new(void);
/* Frees everything. NULL is allowed. */
void iofs_holes_destroy(struct iofs_holes *h);

/* Mark [start, last] used; parts of it may already be used. Returns 0;
 * -EINVAL start > last; -ENOMEM. */
int iofs_holes_take(struct iofs_holes *h, uint64_t start, uint64_t last);
/* Mark [start, last] free again; all of it must be used now. Returns 0;
 * -EINVAL start > last, or part of it is free already; -ENOMEM. */
int iofs_holes_give(struct iofs_holes *h, uint64_t start, uint64_t last);

/* The first hole (in address order) whose last byte is >= iova: writes
 * out[0] = start, out[1] = last and returns 1; returns 0 if there is none.
 * The hole holding iova, if any, is that one. */
int iofs_holes_from(const struct iofs_holes *h, uint64_t iova, uint64_t *out);
/* As iofs_holes_from among the holes of size class cls (0..64) only. */
int iofs_holes_class_from(const struct iofs_holes *h, unsigned cls, uint64_t iova,
                          uint64_t *out);
/* Bit c set: class c (0..63) holds a hole. Class 64 (the whole space as one
 * hole) has no bit. */
uint64_t iofs_holes_classes(const struct iofs_holes *h);
/* Number of holes. */
uint64_t iofs_holes_count(const struct iofs_holes *h);

/* For tests: check every invariant of the structure (sorted blocks, block
 * fill, holes disjoint and not adjacent, each hole in exactly its class,
 * class bits). Returns 0, or -EINVAL at the first broken one. */
int iofs_holes_check(const struct iofs_holes *h);
#endif
