/* I/O page tables for iommufs: one radix table per HWPT, translating an IOVA
 * to an "output address" (in iommufs, a virtual address in the client process
 * that owns the mapping, with a tag naming that process in bits 57-62:
 * core/iommufd/hwpt.py), with accessed/dirty bits set as DMA happens.
 *
 * In-memory format (read directly by the Python reference walker, so it is
 * part of the contract):
 *
 *   - Geometry, fixed at creation: granule G = 1 << granule_shift bytes,
 *     B = bits_per_level, so a table has 1 << B entries of 8 bytes. Level 0
 *     entries map one granule; an entry at level L spans
 *     S(L) = G << (L * B) bytes. levels = ceil((ias_bits - granule_shift) / B);
 *     the root is at level levels-1 and may be only partly used.
 *   - Index of an IOVA at level L: (iova >> (granule_shift + L * B)) & ((1 << B) - 1).
 *   - A table is IOFS_PT_HDR_BYTES of header (struct iofs_pt_hdr) followed
 *     by the entries. Pointers to a table (the root, non-leaf entries) point
 *     at its first entry, which is 64-byte aligned; the header sits just
 *     below it.
 *   - Entry (u64): bit 0 PRESENT, 1 READ, 2 WRITE, 3 ACCESSED, 4 DIRTY,
 *     5 LEAF; bits 6..63 an address (IOFS_PTE_ADDR_MASK).
 *       not PRESENT                    -> no translation (entry is 0)
 *       level 0, PRESENT               -> leaf: address = output address of
 *                                         the granule, flags R/W/A/D
 *       level >= 1, PRESENT, LEAF      -> huge leaf: address aligned to S(L)
 *       level >= 1, PRESENT, no LEAF   -> address of the next-level table
 *   - Every table but the root holds at least one PRESENT entry: tables
 *     emptied by unmap are freed at once, and hdr.valid counts the entries.
 *
 * Not thread-safe: one thread at a time per table (iommufs core serialises
 * every operation on a HWPT, DMA included).
 *
 * Every int/int64_t function returns >= 0 on success or -errno. */
#ifndef IOFS_PAGETABLE_H
#define IOFS_PAGETABLE_H
#include <stdint.h>
#include <stddef.h>
#include "procmem.h"   /* struct iofs_seg */

/* Access / protection bits of the API (not the entry bits). */
#define IOFS_PT_READ  1u
#define IOFS_PT_WRITE 2u

/* Entry bits. */
#define IOFS_PTE_PRESENT   0x01ull
#define IOFS_PTE_READ      0x02ull
#define IOFS_PTE_WRITE     0x04ull
#define IOFS_PTE_ACCESSED  0x08ull
#define IOFS_PTE_DIRTY     0x10ull
#define IOFS_PTE_LEAF      0x20ull
#define IOFS_PTE_FLAGS     0x3full
#define IOFS_PTE_ADDR_MASK (~IOFS_PTE_FLAGS)

#define IOFS_PT_HDR_BYTES  64
#define IOFS_PT_MAX_LEVELS 8

/* Header in front of every table's entries. */
struct iofs_pt_hdr {
    uint32_t valid;     /* PRESENT entries in this table */
    uint32_t level;     /* level of the entries */
    uint64_t reserved[7];
};

struct iofs_pt_stats {
    uint64_t tables;        /* tables allocated, the root included */
    uint64_t table_bytes;   /* bytes requested for them, headers included */
    uint64_t leaves;        /* leaf entries at all levels */
    uint64_t mapped_bytes;  /* bytes of IOVA space that translate */
    uint64_t leaves_at[IOFS_PT_MAX_LEVELS]; /* leaf entries per level */
    uint32_t levels;
    uint32_t granule_shift;
    uint32_t bits_per_level;
    uint32_t ias_bits;
    uint32_t max_leaf_level;
    uint32_t reserved;
    uint64_t table_limit;   /* see iofs_pt_set_table_limit */
};

struct iofs_pt;

/* A new empty table (the root is allocated). granule_shift in [6, 30];
 * bits_per_level in [1, 16]; ias_bits (input address width, bits) in
 * (granule_shift, 63], giving at most IOFS_PT_MAX_LEVELS levels;
 * max_leaf_level (largest level allowed to hold a leaf) < levels.
 * Returns NULL with errno EINVAL (bad geometry) or ENOMEM. */
struct iofs_pt *iofs_pt_new(unsigned granule_shift, unsigned bits_per_level,
                            unsigned ias_bits, unsigned max_leaf_level);
/* Frees every table and pt itself. NULL is allowed. */
void iofs_pt_free(struct iofs_pt *pt);

/* Map IOVA [iova, iova+length) to output addresses [addr, addr+length), in
 * bytes, with prot (IOFS_PT_READ | IOFS_PT_WRITE; 0 is allowed and gives a
 * present mapping that faults with EACCES). A/D start clear. With allow_huge,
 * leaves up to max_leaf_level are used wherever iova and addr are both
 * aligned to the leaf size and the rest of the range covers it.
 * Returns 0 (length 0 is a no-op); -EINVAL: iova, addr or length not
 * granule-aligned, or unknown prot bits; -ERANGE: iova+length beyond
 * 1 << ias_bits; -EOVERFLOW: addr+length wraps past 2^64; -EEXIST: a
 * translation exists in the range; -ENOMEM. On any error nothing changed. */
int iofs_pt_map(struct iofs_pt *pt, uint64_t iova, uint64_t addr,
                uint64_t length, unsigned prot, int allow_huge);

/* Remove every translation in IOVA [iova, iova+length). A huge leaf that
 * straddles an end of the range is first split into next-level leaves (with
 * its flags), so translations outside the range stay. Tables left empty are
 * freed. Returns the bytes that were mapped in the range (0 if none);
 * -EINVAL: iova or length not granule-aligned; -ERANGE: beyond ias;
 * -ENOMEM: a split could not allocate a table (nothing changed). */
int64_t iofs_pt_unmap(struct iofs_pt *pt, uint64_t iova, uint64_t length);

/* Translate the byte at iova for access (IOFS_PT_READ | IOFS_PT_WRITE).
 * *addr_out = its output address, *leaf_size_out = bytes of the leaf that
 * maps it (either pointer may be NULL). On success sets ACCESSED, and DIRTY
 * if access has WRITE, as an IOMMU does for DMA; access 0 only looks up and
 * changes nothing. Returns 0; -EFAULT: no translation (or iova beyond ias);
 * -EACCES: the leaf lacks a permission in access; -EINVAL: unknown bits. */
int iofs_pt_translate(struct iofs_pt *pt, uint64_t iova, unsigned access,
                      uint64_t *addr_out, uint64_t *leaf_size_out);

/* Translate n IOVAs into addrs_out[], as iofs_pt_translate each (A/D set
 * per success). Returns how many were translated before the first failure
 * (n if all); iofs_pt_translate on iovas[result] gives the errno.
 * -EINVAL: unknown access bits. */
int64_t iofs_pt_translate_batch(struct iofs_pt *pt, const uint64_t *iovas,
                                size_t n, unsigned access, uint64_t *addrs_out);

/* The DMA path: translate IOVA [iova, iova+len) and write the output ranges
 * into segs[], merging pieces whose output addresses are contiguous.
 * A/D bits are set only if the whole range translates and fits.
 * Returns the number of segments (0 for len 0); -EFAULT / -EACCES with
 * *fault_iova = the first IOVA that fails (fault_iova may be NULL);
 * -ENOSPC: more than max_segs segments are needed (faults take precedence);
 * -EINVAL: unknown access bits. */
int64_t iofs_pt_translate_range(struct iofs_pt *pt, uint64_t iova, uint64_t len,
                                unsigned access, struct iofs_seg *segs,
                                size_t max_segs, uint64_t *fault_iova);

/* *flags_out = the entry bits (IOFS_PTE_*, low 6 bits) of the leaf mapping
 * iova. Returns 0 or -EFAULT (no translation). */
int iofs_pt_get_ad(struct iofs_pt *pt, uint64_t iova, unsigned *flags_out);

/* Dirty tracking: for IOVA [iova, iova+length), OR into bitmap one bit per
 * page_size bytes (bit 0 = iova, LSB first within each byte) for every page
 * that a DIRTY leaf covers, in part or whole; a huge leaf marks every bit it
 * covers. Unless clear == 0, the DIRTY bit of each such leaf is cleared (the
 * whole leaf, also where it extends past the range). page_size: a power of
 * two, iova and length multiples of it. bitmap must hold length/page_size
 * bits, or be NULL to only clear. Returns the bytes of the range under dirty
 * leaves; -EINVAL; -ERANGE. */
int64_t iofs_pt_read_and_clear_dirty(struct iofs_pt *pt, uint64_t iova,
                                     uint64_t length, uint64_t page_size,
                                     uint8_t *bitmap, int clear);

/* Set DIRTY on every leaf mapping part of IOVA [iova, iova+length) (no
 * permission check). Returns the number of leaves, or -ERANGE. */
int64_t iofs_pt_mark_dirty(struct iofs_pt *pt, uint64_t iova, uint64_t length);

/* Address of the root table's first entry (see the format above). */
uint64_t iofs_pt_root(const struct iofs_pt *pt);
/* Counters and geometry. */
void iofs_pt_stats(const struct iofs_pt *pt, struct iofs_pt_stats *out);
/* Cap the tables this pt may hold (root included); beyond it map and
 * splitting unmap fail with -ENOMEM and change nothing. UINT64_MAX = no cap
 * (the default). Returns 0. */
int iofs_pt_set_table_limit(struct iofs_pt *pt, uint64_t max_tables);

/* Tables and bytes held by all live page tables of this process, for leak
 * tests. */
uint64_t iofs_pt_live_tables(void);
#endif
