/* I/O page tables for iommufs. The format is described in pagetable.h.
 *
 * Every operation on a range walks the tree once, descending only into the
 * entries that the range touches; the level-0 work (filling, clearing) is a
 * flat loop over a run of entries in one table, so mapping or unmapping
 * costs a few instructions per page plus one table allocation per
 * 1 << bits_per_level pages. */
#define _GNU_SOURCE
#include "pagetable.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(struct iofs_pt_hdr) == IOFS_PT_HDR_BYTES, "header size");

struct iofs_pt {
    uint64_t *root;
    unsigned gshift, bpl, levels, top, max_leaf, ias_bits;
    uint64_t nent;                      /* entries per table */
    uint64_t ias_end;                   /* 1 << ias_bits */
    unsigned shift[IOFS_PT_MAX_LEVELS + 1]; /* log2 of an entry's span per level */
    uint64_t table_bytes_each;
    uint64_t tables, table_bytes, mapped_bytes, table_limit;
    uint64_t leaves_at[IOFS_PT_MAX_LEVELS];
};

/* Process-wide, so a leak test sees tables of page tables it has lost. */
static uint64_t live_tables;

static inline struct iofs_pt_hdr *hdr_of(uint64_t *t)
{
    return (struct iofs_pt_hdr *)((char *)t - IOFS_PT_HDR_BYTES);
}

static inline uint64_t *table_of(uint64_t e)
{
    return (uint64_t *)(uintptr_t)(e & IOFS_PTE_ADDR_MASK);
}

static inline uint64_t span_of(const struct iofs_pt *pt, unsigned level)
{
    return 1ull << pt->shift[level];
}

static inline uint64_t index_of(const struct iofs_pt *pt, uint64_t iova, unsigned level)
{
    return (iova >> pt->shift[level]) & (pt->nent - 1);
}

static inline int is_leaf(uint64_t e, unsigned level)
{
    return level == 0 || (e & IOFS_PTE_LEAF);
}

static inline uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }

static uint64_t *table_alloc(struct iofs_pt *pt, unsigned level)
{
    if (pt->tables >= pt->table_limit)
        return NULL;
    char *p = aligned_alloc(64, pt->table_bytes_each);
    if (!p)
        return NULL;
    memset(p, 0, pt->table_bytes_each);
    ((struct iofs_pt_hdr *)p)->level = level;
    pt->tables++;
    pt->table_bytes += pt->table_bytes_each;
    __atomic_add_fetch(&live_tables, 1, __ATOMIC_RELAXED);
    return (uint64_t *)(p + IOFS_PT_HDR_BYTES);
}

static void table_free(struct iofs_pt *pt, uint64_t *t)
{
    pt->tables--;
    pt->table_bytes -= pt->table_bytes_each;
    __atomic_sub_fetch(&live_tables, 1, __ATOMIC_RELAXED);
    free(hdr_of(t));
}

static void free_tree(struct iofs_pt *pt, uint64_t *t, unsigned level)
{
    if (level > 0)
        for (uint64_t i = 0; i < pt->nent; i++)
            if (t[i] && !(t[i] & IOFS_PTE_LEAF))
                free_tree(pt, table_of(t[i]), level - 1);
    table_free(pt, t);
}

struct iofs_pt *iofs_pt_new(unsigned granule_shift, unsigned bits_per_level,
                            unsigned ias_bits, unsigned max_leaf_level)
{
    /* The low 6 bits of an entry are flags, so a granule is >= 64 bytes;
     * ias stays below 64 so that 1 << ias_bits and every span fit a u64. */
    if (granule_shift < 6 || granule_shift > 30 || bits_per_level < 1 ||
        bits_per_level > 16 || ias_bits <= granule_shift || ias_bits > 63) {
        errno = EINVAL;
        return NULL;
    }
    unsigned levels = (ias_bits - granule_shift + bits_per_level - 1) / bits_per_level;
    if (levels > IOFS_PT_MAX_LEVELS || max_leaf_level >= levels) {
        errno = EINVAL;
        return NULL;
    }
    struct iofs_pt *pt = calloc(1, sizeof(*pt));
    if (!pt) {
        errno = ENOMEM;
        return NULL;
    }
    pt->gshift = granule_shift;
    pt->bpl = bits_per_level;
    pt->levels = levels;
    pt->top = levels - 1;
    pt->max_leaf = max_leaf_level;
    pt->ias_bits = ias_bits;
    pt->nent = 1ull << bits_per_level;
    pt->ias_end = 1ull << ias_bits;
    for (unsigned l = 0; l <= IOFS_PT_MAX_LEVELS; l++) {
        unsigned s = granule_shift + l * bits_per_level;
        pt->shift[l] = s > 63 ? 63 : s;
    }
    pt->table_bytes_each = (IOFS_PT_HDR_BYTES + 8 * pt->nent + 63) & ~63ull;
    pt->table_limit = UINT64_MAX;
    pt->root = table_alloc(pt, pt->top);
    if (!pt->root) {
        free(pt);
        errno = ENOMEM;
        return NULL;
    }
    return pt;
}

void iofs_pt_free(struct iofs_pt *pt)
{
    if (!pt)
        return;
    free_tree(pt, pt->root, pt->top);
    free(pt);
}

/* ---- map ------------------------------------------------------------------ */

/* 1 if any translation exists in [lo, hi), which lies inside table t. */
static int range_present(const struct iofs_pt *pt, uint64_t *t, unsigned level,
                         uint64_t lo, uint64_t hi)
{
    if (level == 0) {
        uint64_t *e = &t[index_of(pt, lo, 0)], n = (hi - lo) >> pt->gshift, any = 0;
        for (uint64_t k = 0; k < n; k++)
            any |= e[k];
        return any != 0;
    }
    uint64_t S = span_of(pt, level);
    for (uint64_t b = lo & ~(S - 1); b < hi; b += S) {
        uint64_t e = t[index_of(pt, b, level)];
        if (!e)
            continue;
        if (e & IOFS_PTE_LEAF)
            return 1;
        if (range_present(pt, table_of(e), level - 1, max64(lo, b), min64(hi, b + S)))
            return 1;
    }
    return 0;
}

/* Install [lo, hi) -> addr into table t, which is known to hold no
 * translation there. On -ENOMEM, tables this call created and left empty
 * are already freed; leaves written stay for the caller to clear. */
static int fill(struct iofs_pt *pt, uint64_t *t, unsigned level, uint64_t lo,
                uint64_t hi, uint64_t addr, uint64_t flags, int huge)
{
    if (level == 0) {
        uint64_t *e = &t[index_of(pt, lo, 0)], n = (hi - lo) >> pt->gshift;
        uint64_t v = addr | flags, g = 1ull << pt->gshift;
        for (uint64_t k = 0; k < n; k++, v += g)
            e[k] = v;
        hdr_of(t)->valid += n;
        pt->leaves_at[0] += n;
        pt->mapped_bytes += hi - lo;
        return 0;
    }
    uint64_t S = span_of(pt, level);
    for (uint64_t b = lo & ~(S - 1); b < hi; b += S) {
        uint64_t s = max64(lo, b), end = min64(hi, b + S), a = addr + (s - lo);
        uint64_t *ep = &t[index_of(pt, b, level)];
        if (huge && level <= pt->max_leaf && end - s == S && !(a & (S - 1))) {
            /* Covering the whole entry means it is empty: range_present
             * found no leaf, and tables without leaves do not exist. */
            *ep = a | flags | IOFS_PTE_LEAF;
            hdr_of(t)->valid++;
            pt->leaves_at[level]++;
            pt->mapped_bytes += S;
            continue;
        }
        uint64_t *child;
        if (*ep) {
            child = table_of(*ep);
        } else {
            child = table_alloc(pt, level - 1);
            if (!child)
                return -ENOMEM;
            *ep = (uint64_t)(uintptr_t)child | IOFS_PTE_PRESENT;
            hdr_of(t)->valid++;
        }
        int r = fill(pt, child, level - 1, s, end, a, flags, huge);
        if (r < 0) {
            if (hdr_of(child)->valid == 0) {
                table_free(pt, child);
                *ep = 0;
                hdr_of(t)->valid--;
            }
            return r;
        }
    }
    return 0;
}

/* Remove every leaf in [lo, hi) inside table t; no leaf may straddle lo or
 * hi (split_at guarantees it). Frees child tables left empty. Returns the
 * bytes removed. */
static uint64_t clear_range(struct iofs_pt *pt, uint64_t *t, unsigned level,
                            uint64_t lo, uint64_t hi)
{
    if (level == 0) {
        uint64_t *e = &t[index_of(pt, lo, 0)], n = (hi - lo) >> pt->gshift, cnt = 0;
        for (uint64_t k = 0; k < n; k++) {
            cnt += e[k] & IOFS_PTE_PRESENT;
            e[k] = 0;
        }
        hdr_of(t)->valid -= cnt;
        pt->leaves_at[0] -= cnt;
        pt->mapped_bytes -= cnt << pt->gshift;
        return cnt << pt->gshift;
    }
    uint64_t S = span_of(pt, level), bytes = 0;
    for (uint64_t b = lo & ~(S - 1); b < hi; b += S) {
        uint64_t *ep = &t[index_of(pt, b, level)], e = *ep;
        if (!e)
            continue;
        if (e & IOFS_PTE_LEAF) {
            *ep = 0;
            hdr_of(t)->valid--;
            pt->leaves_at[level]--;
            pt->mapped_bytes -= S;
            bytes += S;
            continue;
        }
        uint64_t *child = table_of(e), s = max64(lo, b), end = min64(hi, b + S);
        if (level == 1 && end - s == S) {
            /* A whole leaf table goes: its count says what it held. */
            uint64_t cnt = hdr_of(child)->valid;
            pt->leaves_at[0] -= cnt;
            pt->mapped_bytes -= cnt << pt->gshift;
            bytes += cnt << pt->gshift;
            hdr_of(child)->valid = 0;
        } else {
            bytes += clear_range(pt, child, level - 1, s, end);
        }
        if (hdr_of(child)->valid == 0) {
            table_free(pt, child);
            *ep = 0;
            hdr_of(t)->valid--;
        }
    }
    return bytes;
}

int iofs_pt_map(struct iofs_pt *pt, uint64_t iova, uint64_t addr,
                uint64_t length, unsigned prot, int allow_huge)
{
    uint64_t gmask = (1ull << pt->gshift) - 1;
    if (((iova | addr | length) & gmask) || (prot & ~(IOFS_PT_READ | IOFS_PT_WRITE)))
        return -EINVAL;
    if (length == 0)
        return 0;
    if (iova >= pt->ias_end || length > pt->ias_end - iova)
        return -ERANGE;
    if (length - 1 > ~addr)
        return -EOVERFLOW;
    uint64_t end = iova + length;
    if (range_present(pt, pt->root, pt->top, iova, end))
        return -EEXIST;
    /* API prot bits READ=1, WRITE=2 sit one bit up in the entry. */
    uint64_t flags = IOFS_PTE_PRESENT | ((uint64_t)prot << 1);
    int r = fill(pt, pt->root, pt->top, iova, end, addr, flags, allow_huge);
    if (r < 0)
        /* The range was empty before, so every leaf in it is ours. */
        clear_range(pt, pt->root, pt->top, iova, end);
    return r;
}

/* ---- unmap ---------------------------------------------------------------- */

struct split_rec {
    uint64_t *ep;    /* entry that held the huge leaf */
    uint64_t old;    /* the leaf */
    unsigned level;
};

/* Make x a leaf boundary: split every huge leaf that straddles it into a
 * table of next-level leaves carrying the same flags. Translations do not
 * change, so on -ENOMEM the splits recorded in rec can be undone. */
static int split_at(struct iofs_pt *pt, uint64_t x, struct split_rec *rec, int *nrec)
{
    if (x == 0 || x >= pt->ias_end)
        return 0;
    uint64_t *t = pt->root;
    for (unsigned level = pt->top; level >= 1; level--) {
        uint64_t *ep = &t[index_of(pt, x, level)], e = *ep;
        if (!e)
            return 0;
        if (!(e & IOFS_PTE_LEAF)) {
            t = table_of(e);
            continue;
        }
        if (!(x & (span_of(pt, level) - 1)))
            return 0;
        uint64_t *child = table_alloc(pt, level - 1);
        if (!child)
            return -ENOMEM;
        uint64_t flags = e & IOFS_PTE_FLAGS, a = e & IOFS_PTE_ADDR_MASK;
        uint64_t S1 = span_of(pt, level - 1);
        if (level == 1)
            flags &= ~IOFS_PTE_LEAF;
        for (uint64_t k = 0; k < pt->nent; k++, a += S1)
            child[k] = a | flags;
        hdr_of(child)->valid = pt->nent;
        pt->leaves_at[level]--;
        pt->leaves_at[level - 1] += pt->nent;
        rec[*nrec].ep = ep;
        rec[*nrec].old = e;
        rec[*nrec].level = level;
        (*nrec)++;
        *ep = (uint64_t)(uintptr_t)child | IOFS_PTE_PRESENT;
        t = child;
    }
    return 0;
}

int64_t iofs_pt_unmap(struct iofs_pt *pt, uint64_t iova, uint64_t length)
{
    if ((iova | length) & ((1ull << pt->gshift) - 1))
        return -EINVAL;
    if (length == 0)
        return 0;
    if (iova >= pt->ias_end || length > pt->ias_end - iova)
        return -ERANGE;
    uint64_t end = iova + length;
    struct split_rec rec[2 * IOFS_PT_MAX_LEVELS];
    int nrec = 0;
    int r = split_at(pt, iova, rec, &nrec);
    if (r == 0)
        r = split_at(pt, end, rec, &nrec);
    if (r < 0) {
        /* Newest first: a later split lives inside an earlier one's table. */
        while (nrec-- > 0) {
            uint64_t *child = table_of(*rec[nrec].ep);
            pt->leaves_at[rec[nrec].level - 1] -= pt->nent;
            pt->leaves_at[rec[nrec].level]++;
            table_free(pt, child);
            *rec[nrec].ep = rec[nrec].old;
        }
        return r;
    }
    return (int64_t)clear_range(pt, pt->root, pt->top, iova, end);
}

/* ---- translation ---------------------------------------------------------- */

/* The table that held the last leaf found, and the IOVA range it covers
 * ((iova >> shift) == key): consecutive IOVAs mostly land in it, so the walk
 * starts there instead of at the root. Starts as the root, which covers
 * every IOVA below 2^63. */
struct walk_cache {
    uint64_t *t;
    unsigned level, shift;
    uint64_t key;
};

static inline void cache_init(const struct iofs_pt *pt, struct walk_cache *c)
{
    c->t = pt->root;
    c->level = pt->top;
    c->shift = 63;
    c->key = 0;
}

/* Entry of the leaf mapping iova (< ias_end), or NULL. */
static inline uint64_t *walk(const struct iofs_pt *pt, struct walk_cache *c,
                             uint64_t iova, unsigned *level_out)
{
    uint64_t *t;
    unsigned level;
    if ((iova >> c->shift) == c->key) {
        t = c->t;
        level = c->level;
    } else {
        t = pt->root;
        level = pt->top;
    }
    for (;;) {
        uint64_t *ep = &t[index_of(pt, iova, level)], e = *ep;
        if (!e)
            return NULL;
        if (is_leaf(e, level)) {
            if (level < pt->top) {
                c->t = t;
                c->level = level;
                c->shift = pt->shift[level + 1];
                c->key = iova >> c->shift;
            }
            *level_out = level;
            return ep;
        }
        t = table_of(e);
        level--;
    }
}

/* Entry bits an access needs, and those it sets. */
static inline uint64_t need_bits(unsigned access)
{
    return (uint64_t)access << 1;
}

static inline uint64_t mark_bits(unsigned access)
{
    if (!access)
        return 0;
    return IOFS_PTE_ACCESSED | ((access & IOFS_PT_WRITE) ? IOFS_PTE_DIRTY : 0);
}

int iofs_pt_translate(struct iofs_pt *pt, uint64_t iova, unsigned access,
                      uint64_t *addr_out, uint64_t *leaf_size_out)
{
    if (access & ~(IOFS_PT_READ | IOFS_PT_WRITE))
        return -EINVAL;
    if (iova >= pt->ias_end)
        return -EFAULT;
    struct walk_cache c;
    unsigned level;
    cache_init(pt, &c);
    uint64_t *ep = walk(pt, &c, iova, &level);
    if (!ep)
        return -EFAULT;
    uint64_t e = *ep, need = need_bits(access), mark = mark_bits(access);
    if ((e & need) != need)
        return -EACCES;
    if ((e & mark) != mark)
        *ep = e | mark;
    uint64_t S = span_of(pt, level);
    if (addr_out)
        *addr_out = (e & IOFS_PTE_ADDR_MASK) + (iova & (S - 1));
    if (leaf_size_out)
        *leaf_size_out = S;
    return 0;
}

/* Where the walk of iova (< ias_end) ends: the entry that holds its leaf or
 * is missing, reached through the upper tables only. Those are few and stay
 * in cache; the entry itself usually is not, in a large table. */
static inline const uint64_t *last_entry(const struct iofs_pt *pt, uint64_t iova)
{
    uint64_t *t = pt->root;
    for (unsigned level = pt->top; level > 0; level--) {
        uint64_t e = t[index_of(pt, iova, level)];
        if (!e || (e & IOFS_PTE_LEAF))
            return &t[index_of(pt, iova, level)];
        t = table_of(e);
    }
    return &t[index_of(pt, iova, 0)];
}

/* IOVAs ahead of the one translated whose last entry is prefetched: the
 * cache misses of independent walks overlap instead of queueing. */
#define BATCH_PREFETCH 16

int64_t iofs_pt_translate_batch(struct iofs_pt *pt, const uint64_t *iovas,
                                size_t n, unsigned access, uint64_t *addrs_out)
{
    if (access & ~(IOFS_PT_READ | IOFS_PT_WRITE))
        return -EINVAL;
    uint64_t need = need_bits(access), mark = mark_bits(access);
    struct walk_cache c;
    cache_init(pt, &c);
    size_t i;
    for (i = 0; i < n; i++) {
        uint64_t iova = iovas[i];
        unsigned level;
        if (i + BATCH_PREFETCH < n) {
            uint64_t ahead = iovas[i + BATCH_PREFETCH];
            /* In the table the last walk ended in: hot already. */
            if ((ahead >> c.shift) != c.key && ahead < pt->ias_end)
                __builtin_prefetch(last_entry(pt, ahead), 1);
        }
        if (iova >= pt->ias_end)
            break;
        uint64_t *ep = walk(pt, &c, iova, &level);
        if (!ep)
            break;
        uint64_t e = *ep;
        if ((e & need) != need)
            break;
        if ((e & mark) != mark)
            *ep = e | mark;
        addrs_out[i] = (e & IOFS_PTE_ADDR_MASK) + (iova & (span_of(pt, level) - 1));
    }
    return (int64_t)i;
}

int64_t iofs_pt_translate_range(struct iofs_pt *pt, uint64_t iova, uint64_t len,
                                unsigned access, struct iofs_seg *segs,
                                size_t max_segs, uint64_t *fault_iova)
{
    if (access & ~(IOFS_PT_READ | IOFS_PT_WRITE))
        return -EINVAL;
    uint64_t need = need_bits(access), mark = mark_bits(access);
    struct walk_cache c;
    cache_init(pt, &c);

    /* Pass 1: check everything and build the segments, changing nothing,
     * so that a fault part-way leaves no A/D bits behind. */
    uint64_t cur = iova, rem = len, seg_end = 0;
    size_t nseg = 0;
    while (rem) {
        unsigned level;
        uint64_t *ep = cur < pt->ias_end ? walk(pt, &c, cur, &level) : NULL;
        if (!ep || (*ep & need) != need) {
            if (fault_iova)
                *fault_iova = cur;
            return ep ? -EACCES : -EFAULT;
        }
        uint64_t S = span_of(pt, level), off = cur & (S - 1);
        uint64_t piece = min64(S - off, rem), a = (*ep & IOFS_PTE_ADDR_MASK) + off;
        if (nseg && a == seg_end) {
            if (nseg <= max_segs)
                segs[nseg - 1].len += piece;
        } else {
            if (nseg < max_segs) {
                segs[nseg].addr = a;
                segs[nseg].len = piece;
            }
            nseg++;
        }
        seg_end = a + piece;
        cur += piece;
        rem -= piece;
    }
    if (nseg > max_segs)
        return -ENOSPC;

    /* Pass 2: the DMA will happen; mark as the hardware would. */
    if (mark) {
        cur = iova;
        rem = len;
        while (rem) {
            unsigned level;
            uint64_t *ep = walk(pt, &c, cur, &level);
            uint64_t S = span_of(pt, level), piece = min64(S - (cur & (S - 1)), rem);
            if ((*ep & mark) != mark)
                *ep |= mark;
            cur += piece;
            rem -= piece;
        }
    }
    return (int64_t)nseg;
}

int iofs_pt_get_ad(struct iofs_pt *pt, uint64_t iova, unsigned *flags_out)
{
    if (iova >= pt->ias_end)
        return -EFAULT;
    struct walk_cache c;
    unsigned level;
    cache_init(pt, &c);
    uint64_t *ep = walk(pt, &c, iova, &level);
    if (!ep)
        return -EFAULT;
    if (flags_out)
        *flags_out = (unsigned)(*ep & IOFS_PTE_FLAGS);
    return 0;
}

/* ---- dirty tracking ------------------------------------------------------- */

/* Set bits [first, last) of bitmap. */
static void set_bits(uint8_t *bm, uint64_t first, uint64_t last)
{
    while (first < last && (first & 7))
        bm[first >> 3] |= 1u << (first & 7), first++;
    if (last - first >= 8 && first < last) {
        memset(bm + (first >> 3), 0xff, (last - first) >> 3);
        first += (last - first) & ~7ull;
    }
    while (first < last)
        bm[first >> 3] |= 1u << (first & 7), first++;
}

static uint64_t dirty_walk(struct iofs_pt *pt, uint64_t *t, unsigned level,
                           uint64_t lo, uint64_t hi, uint64_t base, unsigned pshift,
                           uint8_t *bm, int clear)
{
    uint64_t S = span_of(pt, level), bytes = 0;
    for (uint64_t b = lo & ~(S - 1); b < hi; b += S) {
        uint64_t *ep = &t[index_of(pt, b, level)], e = *ep;
        uint64_t s = max64(lo, b), end = min64(hi, b + S);
        if (!e)
            continue;
        if (!is_leaf(e, level)) {
            bytes += dirty_walk(pt, table_of(e), level - 1, s, end, base, pshift, bm, clear);
            continue;
        }
        if (!(e & IOFS_PTE_DIRTY))
            continue;
        if (bm)
            set_bits(bm, (s - base) >> pshift, ((end - 1 - base) >> pshift) + 1);
        bytes += end - s;
        if (clear)
            *ep = e & ~IOFS_PTE_DIRTY;
    }
    return bytes;
}

int64_t iofs_pt_read_and_clear_dirty(struct iofs_pt *pt, uint64_t iova,
                                     uint64_t length, uint64_t page_size,
                                     uint8_t *bitmap, int clear)
{
    if (!page_size || (page_size & (page_size - 1)) || ((iova | length) & (page_size - 1)))
        return -EINVAL;
    if (length == 0)
        return 0;
    if (iova >= pt->ias_end || length > pt->ias_end - iova)
        return -ERANGE;
    unsigned pshift = (unsigned)__builtin_ctzll(page_size);
    return (int64_t)dirty_walk(pt, pt->root, pt->top, iova, iova + length, iova,
                               pshift, bitmap, clear);
}

/* Set DIRTY on every leaf that maps part of [lo, hi), as a device write
 * through it would, but with no permission check: the IOMMU selftest's
 * "the hardware dirtied this" (IOMMU_TEST_OP_DIRTY). Returns the leaves set. */
static uint64_t mark_walk(struct iofs_pt *pt, uint64_t *t, unsigned level,
                          uint64_t lo, uint64_t hi)
{
    uint64_t S = span_of(pt, level), n = 0;
    for (uint64_t b = lo & ~(S - 1); b < hi; b += S) {
        uint64_t *ep = &t[index_of(pt, b, level)], e = *ep;
        if (!e)
            continue;
        if (!is_leaf(e, level)) {
            n += mark_walk(pt, table_of(e), level - 1, max64(lo, b), min64(hi, b + S));
            continue;
        }
        *ep = e | IOFS_PTE_DIRTY;
        n++;
    }
    return n;
}

int64_t iofs_pt_mark_dirty(struct iofs_pt *pt, uint64_t iova, uint64_t length)
{
    if (length == 0)
        return 0;
    if (iova >= pt->ias_end || length > pt->ias_end - iova)
        return -ERANGE;
    return (int64_t)mark_walk(pt, pt->root, pt->top, iova, iova + length);
}

/* ---- introspection -------------------------------------------------------- */

uint64_t iofs_pt_root(const struct iofs_pt *pt)
{
    return (uint64_t)(uintptr_t)pt->root;
}

void iofs_pt_stats(const struct iofs_pt *pt, struct iofs_pt_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->tables = pt->tables;
    out->table_bytes = pt->table_bytes;
    out->mapped_bytes = pt->mapped_bytes;
    for (unsigned l = 0; l < IOFS_PT_MAX_LEVELS; l++) {
        out->leaves_at[l] = pt->leaves_at[l];
        out->leaves += pt->leaves_at[l];
    }
    out->levels = pt->levels;
    out->granule_shift = pt->gshift;
    out->bits_per_level = pt->bpl;
    out->ias_bits = pt->ias_bits;
    out->max_leaf_level = pt->max_leaf;
    out->table_limit = pt->table_limit;
}

int iofs_pt_set_table_limit(struct iofs_pt *pt, uint64_t max_tables)
{
    pt->table_limit = max_tables;
    return 0;
}

uint64_t iofs_pt_live_tables(void)
{
    return __atomic_load_n(&live_tables, __ATOMIC_RELAXED);
}

