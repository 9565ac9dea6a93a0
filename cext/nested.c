/* Nested (2-D) translation and IOTLB for iommufs; the interface and the
 * sources of every rule are in nested.h ("ref" = nesting.md).
 *
 * A walk reads each stage-1 entry by first translating its GPA through
 * stage 2 (a read), checks it, and remembers where it was read. Only when
 * the whole translation succeeded (stage-2 output included) are the A/D
 * (EA) bits written back, each with compare-and-set on the word that was
 * read; a lost compare restarts the walk (ref §2.4 "A/D updates"). So a
 * faulting request changes nothing in guest memory.
 *
 * IOTLB: one entry per 4 KiB input page, keyed by (PASID/SSID, page,
 * privileged bit), in a chained hash with an LRU list; entries leave only by
 * invalidation or LRU eviction at capacity (ref §5.3). Faults are never
 * cached (ref §5.1). A hit is served when the entry allows the access and,
 * for a write, the entry was filled by a write (so S1 D and S2 dirty are
 * already recorded); otherwise the request walks again and replaces the
 * entry (as a CPU re-walks to set D; no negative caching). */
#define _GNU_SOURCE
#include "nested.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define PG_SHIFT 12
#define PG_SIZE  (1ull << PG_SHIFT)
#define BITS(hi, lo) ((((hi) >= 63) ? ~0ull : ((1ull << ((hi) + 1)) - 1)) & ~((1ull << (lo)) - 1))
#define NIL (-1)
#define CD_SLOTS 64
#define MAX_CAPACITY (1ull << 24)

/* ---- guest memory ------------------------------------------------------- */

/* Resolve [a, a+len) to a local pointer or a (pid, va). */
static int mem_where(const struct iofs_nest_mem *m, uint64_t a, uint64_t len,
                     uint8_t **local, int *pid, uint64_t *va)
{
    if (m->kind == IOFS_NEST_MEM_LOCAL) {
        if (!m->local || a < m->origin)
            return -EFAULT;
        uint64_t off = a - m->origin;
        if (m->size < len || off > m->size - len)
            return -EFAULT;
        *local = m->local + off;
        return 0;
    }
    if (m->kind == IOFS_NEST_MEM_PROC) {
        uint64_t tag = 0, v = a;
        if (m->tag_shift) {
            if (m->tag_shift >= 64)
                return -EFAULT;
            tag = a >> m->tag_shift;
            v = a & ((1ull << m->tag_shift) - 1);
        }
        if (tag >= IOFS_NEST_MAX_TAGS || m->pids[tag] <= 0)
            return -EFAULT;
        if (v + len < v)
            return -EFAULT;
        *local = NULL;
        *pid = m->pids[tag];
        *va = v;
        return 0;
    }
    return -EFAULT;
}

static int mem_read(const struct iofs_nest_mem *m, uint64_t a, void *buf, uint64_t len)
{
    uint8_t *p;
    int pid = 0;
    uint64_t va = 0;
    int rc = mem_where(m, a, len, &p, &pid, &va);
    if (rc)
        return rc;
    if (p) {
        memcpy(buf, p, len);
        return 0;
    }
    int64_t n = iofs_vm_read(pid, va, buf, len);
    return n == (int64_t)len ? 0 : -EFAULT;
}

int iofs_nest_mem_read64(const struct iofs_nest_mem *m, uint64_t a, uint64_t *val)
{
    return mem_read(m, a, val, 8);
}

int iofs_nest_mem_cas64(const struct iofs_nest_mem *m, uint64_t a, uint64_t expect,
                        uint64_t desired, uint64_t *seen)
{
    uint8_t *p;
    int pid = 0;
    uint64_t va = 0, cur;
    int rc = mem_where(m, a, 8, &p, &pid, &va);
    if (rc)
        return rc;
    if (p) {
        if (((uintptr_t)p & 7) == 0) {
            cur = expect;
            int ok = __atomic_compare_exchange_n((uint64_t *)(void *)p, &cur, desired, 0,
                                                 __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
            if (seen)
                *seen = cur;
            return ok ? 1 : 0;
        }
        memcpy(&cur, p, 8);
        if (seen)
            *seen = cur;
        if (cur != expect)
            return 0;
        memcpy(p, &desired, 8);
        return 1;
    }
    /* Another process's memory: read, compare, write. Not atomic against
     * the client's own CPUs (process_vm_* has no compare-and-swap); the
     * window is a few microseconds. */
    if (iofs_vm_read(pid, va, &cur, 8) != 8)
        return -EFAULT;
    if (seen)
        *seen = cur;
    if (cur != expect)
        return 0;
    if (iofs_vm_write(pid, va, &desired, 8) != 8)
        return -EFAULT;
    return 1;
}

/* ---- the domain ----------------------------------------------------------- */

struct tlbe {
    uint64_t page;       /* iova >> 12 */
    uint64_t s1_first;   /* first and last 4 KiB input page of the stage-1 */
    uint64_t s1_last;    /* leaf this entry was cut from (invalidation span) */
    uint64_t out;        /* HVA of the page start */
    uint64_t gpa;        /* GPA of the page start */
    uint64_t size;       /* combined page size */
    uint64_t s1_size;
    uint32_t pasid;
    uint32_t asid;
    uint8_t priv, perms, dirty, global;
    uint32_t s1_level;
    int32_t hnext, lprev, lnext;
};

struct cdc {
    uint32_t ssid;       /* resolved CD index */
    uint32_t valid;
    uint64_t cd0, cd1;
};

struct iofs_nest {
    struct iofs_nest_cfg cfg;
    struct iofs_nest_mem mem;
    struct iofs_pt *s2;
    /* IOTLB */
    uint64_t cap;
    struct tlbe *e;
    int32_t *bucket;
    uint64_t nbucket;     /* power of two */
    int32_t free_head, lru_head, lru_tail;  /* head = most recent */
    uint64_t used;
    struct cdc cd[CD_SLOTS];
    unsigned cd_next;
    struct iofs_nest_stats st;
};

static inline uint64_t hash_of(uint64_t page, uint32_t pasid, unsigned priv)
{
    uint64_t h = page * 0x9E3779B97F4A7C15ull ^ ((uint64_t)pasid * 0xC2B2AE3D27D4EB4Full) ^ priv;
    return h ^ (h >> 29);
}

static int tlb_alloc(struct iofs_nest *d, uint64_t cap)
{
    d->cap = cap;
    d->e = NULL;
    d->bucket = NULL;
    d->nbucket = 0;
    d->free_head = d->lru_head = d->lru_tail = NIL;
    d->used = 0;
    if (!cap)
        return 0;
    uint64_t nb = 16;
    while (nb < cap)
        nb <<= 1;
    d->e = calloc(cap, sizeof *d->e);
    d->bucket = malloc(nb * sizeof *d->bucket);
    if (!d->e || !d->bucket) {
        free(d->e);
        free(d->bucket);
        d->e = NULL;
        d->bucket = NULL;
        d->cap = 0;
        return -ENOMEM;
    }
    d->nbucket = nb;
    for (uint64_t i = 0; i < nb; i++)
        d->bucket[i] = NIL;
    for (uint64_t i = 0; i < cap; i++)
        d->e[i].hnext = (i + 1 < cap) ? (int32_t)(i + 1) : NIL;
    d->free_head = 0;
    return 0;
}

static void lru_unlink(struct iofs_nest *d, int32_t i)
{
    struct tlbe *x = &d->e[i];
    if (x->lprev != NIL) d->e[x->lprev].lnext = x->lnext; else d->lru_head = x->lnext;
    if (x->lnext != NIL) d->e[x->lnext].lprev = x->lprev; else d->lru_tail = x->lprev;
}

static void lru_push_front(struct iofs_nest *d, int32_t i)
{
    struct tlbe *x = &d->e[i];
    x->lprev = NIL;
    x->lnext = d->lru_head;
    if (d->lru_head != NIL) d->e[d->lru_head].lprev = i; else d->lru_tail = i;
    d->lru_head = i;
}

static int32_t *slot_of(struct iofs_nest *d, uint64_t page, uint32_t pasid, unsigned priv)
{
    return &d->bucket[hash_of(page, pasid, priv) & (d->nbucket - 1)];
}

static int32_t tlb_find(struct iofs_nest *d, uint64_t page, uint32_t pasid, unsigned priv)
{
    for (int32_t i = *slot_of(d, page, pasid, priv); i != NIL; i = d->e[i].hnext) {
        struct tlbe *x = &d->e[i];
        if (x->page == page && x->pasid == pasid && x->priv == priv)
            return i;
    }
    return NIL;
}

static void tlb_remove(struct iofs_nest *d, int32_t i)
{
    struct tlbe *x = &d->e[i];
    int32_t *pp = slot_of(d, x->page, x->pasid, x->priv);
    while (*pp != i)
        pp = &d->e[*pp].hnext;
    *pp = x->hnext;
    lru_unlink(d, i);
    x->hnext = d->free_head;
    d->free_head = i;
    d->used--;
}

static void tlb_insert(struct iofs_nest *d, const struct tlbe *v)
{
    if (!d->cap)
        return;
    int32_t i = tlb_find(d, v->page, v->pasid, v->priv);
    if (i != NIL)
        tlb_remove(d, i);
    if (d->free_head == NIL) {
        tlb_remove(d, d->lru_tail);
        d->st.evictions++;
    }
    i = d->free_head;
    d->free_head = d->e[i].hnext;
    d->e[i] = *v;
    int32_t *slot = slot_of(d, v->page, v->pasid, v->priv);
    d->e[i].hnext = *slot;
    *slot = i;
    lru_push_front(d, i);
    d->used++;
    d->st.fills++;
}

/* Drop every entry for which pred says yes; returns how many. */
typedef int (*tlb_pred)(const struct tlbe *x, const void *arg);

static int64_t tlb_drop_if(struct iofs_nest *d, tlb_pred pred, const void *arg)
{
    int64_t n = 0;
    int32_t i = d->lru_head;
    while (i != NIL) {
        int32_t next = d->e[i].lnext;
        if (pred(&d->e[i], arg)) {
            tlb_remove(d, i);
            n++;
        }
        i = next;
    }
    d->st.inv_calls++;
    d->st.inv_entries += (uint64_t)n;
    return n;
}

static int validate_cfg(const struct iofs_nest_cfg *c)
{
    if (c->format == IOFS_NEST_FMT_VTD) {
        if (c->addr_width != 48 && c->addr_width != 57)
            return -EINVAL;
        if (c->haw < 32 || c->haw > 52)
            return -EINVAL;
        return 0;
    }
    if (c->format == IOFS_NEST_FMT_SMMU) {
        if (c->haw < 32 || c->haw > 52)
            return -EINVAL;
        return 0;
    }
    return -EINVAL;
}

struct iofs_nest *iofs_nest_new(const struct iofs_nest_cfg *cfg, struct iofs_pt *s2,
                                const struct iofs_nest_mem *mem, uint64_t capacity)
{
    if (!cfg || !mem || validate_cfg(cfg) || capacity > MAX_CAPACITY) {
        errno = EINVAL;
        return NULL;
    }
    struct iofs_nest *d = calloc(1, sizeof *d);
    if (!d) {
        errno = ENOMEM;
        return NULL;
    }
    d->cfg = *cfg;
    d->mem = *mem;
    d->s2 = s2;
    if (tlb_alloc(d, capacity)) {
        free(d);
        errno = ENOMEM;
        return NULL;
    }
    return d;
}

void iofs_nest_free(struct iofs_nest *d)
{
    if (!d)
        return;
    free(d->e);
    free(d->bucket);
    free(d);
}

int iofs_nest_set_mem(struct iofs_nest *d, const struct iofs_nest_mem *mem)
{
    if (!mem)
        return -EINVAL;
    d->mem = *mem;
    return 0;
}

int iofs_nest_set_s2(struct iofs_nest *d, struct iofs_pt *s2)
{
    d->s2 = s2;
    iofs_nest_s2_changed(d);
    return 0;
}

int iofs_nest_set_capacity(struct iofs_nest *d, uint64_t capacity)
{
    if (capacity > MAX_CAPACITY)
        return -EINVAL;
    /* Keep the `capacity` most recent entries, in the same LRU order. */
    uint64_t keep = d->used < capacity ? d->used : capacity;
    struct tlbe *saved = NULL;
    if (keep) {
        saved = malloc(keep * sizeof *saved);
        if (!saved)
            return -ENOMEM;
        uint64_t k = 0;
        for (int32_t i = d->lru_head; i != NIL && k < keep; i = d->e[i].lnext)
            saved[k++] = d->e[i];
    }
    struct iofs_nest old = *d;
    uint64_t dropped = d->used - keep;
    if (tlb_alloc(d, capacity)) {
        *d = old;               /* nothing changed */
        free(saved);
        return -ENOMEM;
    }
    free(old.e);
    free(old.bucket);
    uint64_t fills = d->st.fills;
    for (uint64_t k = keep; k > 0; k--)
        tlb_insert(d, &saved[k - 1]);
    d->st.fills = fills;
    d->st.evictions += dropped;
    free(saved);
    return 0;
}

/* ---- walk context ---------------------------------------------------------- */

#define MAX_UPD 6
struct upd {
    uint64_t gpa, hva, old, new;
    unsigned level;
};

struct wctx {
    struct iofs_nest *d;
    uint32_t pasid;
    uint64_t iova;
    unsigned access;
    struct iofs_nest_fault *f;
    struct upd upd[MAX_UPD];
    int nupd;
};

/* Only the scalar fields: upd[] is read below nupd only, so the hit path
 * does not pay for clearing it. */
static inline void wctx_init(struct wctx *w, struct iofs_nest *d, uint32_t pasid, uint64_t iova,
                             unsigned access, struct iofs_nest_fault *f)
{
    w->d = d;
    w->pasid = pasid;
    w->iova = iova;
    w->access = access;
    w->f = f;
    w->nupd = 0;
}

static int fault(struct wctx *w, unsigned stage, unsigned reason, int err, unsigned level,
                 unsigned cls, uint64_t addr)
{
    struct iofs_nest_fault *f = w->f;
    f->stage = stage;
    f->reason = reason;
    f->err = err;
    f->level = level;
    f->cls = cls;
    f->access = w->access;
    f->iova = w->iova;
    f->addr = addr;
    w->d->st.faults++;
    return err;
}

/* Stage 2 of one GPA. acc: IOFS_PT_READ/WRITE. */
static inline int s2_tr(struct iofs_nest *d, uint64_t gpa, unsigned acc, uint64_t *hva,
                        uint64_t *size)
{
    if (!d->s2) {
        *hva = gpa;
        if (size)
            *size = 1ull << 63;
        return 0;
    }
    return iofs_pt_translate(d->s2, gpa, acc, hva, size);
}

/* Permissions stage 2 gives gpa (IOFS_NEST_READ/WRITE), or 0. */
static unsigned s2_perms(struct iofs_nest *d, uint64_t gpa)
{
    if (!d->s2)
        return IOFS_NEST_READ | IOFS_NEST_WRITE;
    unsigned fl = 0;
    if (iofs_pt_get_ad(d->s2, gpa, &fl))
        return 0;
    return ((fl & IOFS_PTE_READ) ? IOFS_NEST_READ : 0) | ((fl & IOFS_PTE_WRITE) ? IOFS_NEST_WRITE : 0);
}

/* Read the 64-bit stage-1 word at GPA gpa (table walk / CD fetch). */
static int s1_load(struct wctx *w, uint64_t gpa, unsigned level, unsigned cls,
                   uint64_t *hva, uint64_t *val)
{
    int rc = s2_tr(w->d, gpa, IOFS_PT_READ, hva, NULL);
    if (rc)
        return fault(w, 2, IOFS_NEST_F_S2_WALK, rc, level, cls, gpa);
    if (mem_read(&w->d->mem, *hva, val, 8))
        return fault(w, 2, IOFS_NEST_F_MEMORY, -EFAULT, level, cls, gpa);
    return 0;
}

static void note_upd(struct wctx *w, uint64_t gpa, uint64_t hva, uint64_t old, uint64_t new,
                     unsigned level)
{
    if (old == new || w->nupd >= MAX_UPD)
        return;
    w->upd[w->nupd++] = (struct upd){gpa, hva, old, new, level};
}

/* Write back the noted A/D updates. Returns 0, 1 (a compare lost: walk
 * again), or a fault. */
static int write_back(struct wctx *w)
{
    for (int i = 0; i < w->nupd; i++) {
        struct upd *u = &w->upd[i];
        uint64_t hva;
        /* The update is a write through stage 2 (ref §2.5). */
        int rc = s2_tr(w->d, u->gpa, IOFS_PT_WRITE, &hva, NULL);
        if (rc)
            return fault(w, 2, IOFS_NEST_F_S2_WALK, rc, u->level, IOFS_NEST_CLASS_TT, u->gpa);
        rc = iofs_nest_mem_cas64(&w->d->mem, hva, u->old, u->new, NULL);
        if (rc < 0)
            return fault(w, 2, IOFS_NEST_F_MEMORY, -EFAULT, u->level, IOFS_NEST_CLASS_TT, u->gpa);
        if (rc == 0)
            return 1;
        w->d->st.ad_writes++;
    }
    return 0;
}

/* The final access through stage 2 and the combined result. */
static int finish(struct wctx *w, uint64_t gpa, uint64_t s1_size, unsigned s1_perms,
                  unsigned level, struct iofs_nest_result *r)
{
    uint64_t hva, s2size;
    unsigned rw = w->access & (IOFS_NEST_READ | IOFS_NEST_WRITE);
    int rc = s2_tr(w->d, gpa, rw, &hva, &s2size);
    if (rc)
        return fault(w, 2, IOFS_NEST_F_S2_OUTPUT, rc, level, IOFS_NEST_CLASS_IN, gpa);
    unsigned s2p = s2_perms(w->d, gpa);
    unsigned perms = s1_perms;
    if (!(s2p & IOFS_NEST_READ))
        perms &= ~(IOFS_NEST_READ | IOFS_NEST_EXEC);
    if (!(s2p & IOFS_NEST_WRITE))
        perms &= ~IOFS_NEST_WRITE;
    r->out = hva;
    r->gpa = gpa;
    r->s1_size = s1_size;
    r->page_size = s1_size < s2size ? s1_size : s2size;
    r->perms = perms;
    r->hit = 0;
    r->s1_level = level;
    return 0;
}

/* ---- VT-d first stage (ref §2.4, §2.5) ------------------------------------ */

#define X86_P   (1ull << 0)
#define X86_RW  (1ull << 1)
#define X86_US  (1ull << 2)
#define X86_A   (1ull << 5)
#define X86_D   (1ull << 6)
#define X86_PS  (1ull << 7)
#define X86_EA  (1ull << 10)
#define X86_XD  (1ull << 63)

static int vtd_walk(struct wctx *w, struct iofs_nest_result *r)
{
    const struct iofs_nest_cfg *c = &w->d->cfg;
    unsigned aw = c->addr_width, levels = aw == 57 ? 5 : 4, top = levels - 1;
    uint64_t iova = w->iova;
    unsigned acc = w->access;
    int priv = !!(acc & IOFS_NEST_PRIV), write = !!(acc & IOFS_NEST_WRITE);

    /* Canonical: bits [63:aw-1] all equal (ref §2.4). */
    uint64_t hi = iova >> (aw - 1);
    if (hi != 0 && hi != (~0ull >> (aw - 1)))
        return fault(w, 1, IOFS_NEST_F_NON_CANONICAL, -EFAULT, top, IOFS_NEST_CLASS_IN, iova);
    /* Supervisor requests only with SRE (ref §2.4). */
    if (priv && !(c->vtd_flags & IOFS_NEST_VTD_SRE))
        return fault(w, 1, IOFS_NEST_F_PERMISSION, -EACCES, top, IOFS_NEST_CLASS_IN, iova);

    uint64_t addr_mask = BITS(c->haw - 1, 12);
    uint64_t rsv = c->haw < 52 ? BITS(51, c->haw) : 0;
    uint64_t table = c->pgtbl_addr & ~0xfffull;   /* low 12 bits dropped (ref §2.3) */
    if (table & ~addr_mask)   /* above the address width: reserved (ref §2.3 verify) */
        return fault(w, 1, IOFS_NEST_F_RESERVED, -EFAULT, top, IOFS_NEST_CLASS_TT, iova);
    uint64_t amark = X86_A | ((c->vtd_flags & IOFS_NEST_VTD_EAFE) ? X86_EA : 0);
    int rw = 1, us = 1, xd = 0;
    for (int L = (int)top; L >= 0; L--) {
        unsigned shift = PG_SHIFT + 9 * (unsigned)L;
        uint64_t egpa = table + 8 * ((iova >> shift) & 511), hva, e;
        int rc = s1_load(w, egpa, (unsigned)L, IOFS_NEST_CLASS_TT, &hva, &e);
        if (rc)
            return rc;
        if (!(e & X86_P))
            return fault(w, 1, IOFS_NEST_F_TRANSLATION, -EFAULT, (unsigned)L, IOFS_NEST_CLASS_TT, iova);
        int ps = L >= 1 && (e & X86_PS);
        int bad = (e & rsv) != 0;
        if (ps && L >= 3)
            bad = 1;                          /* PS in PML4E/PML5E */
        if (ps && L == 2 && !c->fs1gp)
            bad = 1;                          /* 1 GiB needs FS1GP */
        if (ps && (e & BITS(shift - 1, 13)))
            bad = 1;                          /* large-page low address bits */
        if (bad)
            return fault(w, 1, IOFS_NEST_F_RESERVED, -EFAULT, (unsigned)L, IOFS_NEST_CLASS_TT, iova);
        rw &= !!(e & X86_RW);
        us &= !!(e & X86_US);
        xd |= !!(e & X86_XD);
        int leaf = L == 0 || ps;
        uint64_t ne = e | amark;
        if (leaf && write)
            ne |= X86_D;
        note_upd(w, egpa, hva, e, ne, (unsigned)L);
        if (!leaf) {
            table = e & addr_mask;
            continue;
        }
        uint64_t size = 1ull << shift;
        uint64_t gpa = (e & addr_mask & ~(size - 1)) | (iova & (size - 1));
        /* Permissions (ref §2.4): user requests need U/S and R/W on every
         * level; supervisor requests ignore U/S, and write to R/W=0 only
         * with WPE clear; execute needs XD clear on every level. */
        unsigned perms;
        if (priv)
            perms = IOFS_NEST_READ | ((rw || !(c->vtd_flags & IOFS_NEST_VTD_WPE)) ? IOFS_NEST_WRITE : 0);
        else
            perms = us ? (IOFS_NEST_READ | (rw ? IOFS_NEST_WRITE : 0)) : 0;
        if (perms && !xd)
            perms |= IOFS_NEST_EXEC;
        unsigned need = acc & (IOFS_NEST_READ | IOFS_NEST_WRITE | IOFS_NEST_EXEC);
        if ((perms & need) != need)
            return fault(w, 1, IOFS_NEST_F_PERMISSION, -EACCES, (unsigned)L, IOFS_NEST_CLASS_IN, iova);
        return finish(w, gpa, size, perms, (unsigned)L, r);
    }
    return fault(w, 1, IOFS_NEST_F_TRANSLATION, -EFAULT, 0, IOFS_NEST_CLASS_TT, iova);
}

/* ---- SMMUv3: vSTE, CD, VMSAv8-64 4 KiB (ref §3.3-§3.5) -------------------- */

#define CD0_T0SZ(x)  ((x) & 0x3f)
#define CD0_TG0(x)   (((x) >> 6) & 3)
#define CD0_EPD0     (1ull << 14)
#define CD0_ENDI     (1ull << 15)
#define CD0_V        (1ull << 31)
#define CD0_IPS(x)   (((x) >> 32) & 7)
#define CD0_AFFD     (1ull << 35)
#define CD0_WXN      (1ull << 36)
#define CD0_TBI0     (1ull << 38)
#define CD0_AA64     (1ull << 41)
#define CD0_HD       (1ull << 42)
#define CD0_HA       (1ull << 43)
#define CD0_ASID(x)  ((uint32_t)((x) >> 48))
#define CD1_TTB0     BITS(51, 4)

#define D_VALID   (1ull << 0)
#define D_TABLE   (1ull << 1)
#define D_AP1     (1ull << 6)    /* unprivileged allowed */
#define D_AP2     (1ull << 7)    /* read-only */
#define D_AF      (1ull << 10)
#define D_NG      (1ull << 11)
#define D_DBM     (1ull << 51)
#define D_PXN     (1ull << 53)
#define D_UXN     (1ull << 54)
#define D_PXNT    (1ull << 59)
#define D_XNT     (1ull << 60)
#define D_APT0    (1ull << 61)
#define D_APT1    (1ull << 62)
#define D_OA      BITS(47, 12)

/* Resolve the CD for w->pasid. Returns 0 with cd0/cd1, 1 for "bypass stage
 * 1", or a fault. use_cache: consult and fill the CD cache. */
static int smmu_cd(struct wctx *w, int use_cache, uint64_t *cd0, uint64_t *cd1)
{
    struct iofs_nest *d = w->d;
    uint64_t ste0 = d->cfg.ste[0], ste1 = d->cfg.ste[1];
    if (!(ste0 & 1))
        return fault(w, 1, IOFS_NEST_F_BAD_STE, -EFAULT, 0, IOFS_NEST_CLASS_CD, w->iova);
    unsigned config = (ste0 >> 1) & 7;
    if (config == 4)
        return 1;                                   /* bypass: stage 2 only */
    if (config != 5)                                /* abort (or refused values) */
        return fault(w, 1, IOFS_NEST_F_BAD_STE, -EFAULT, 0, IOFS_NEST_CLASS_CD, w->iova);
    unsigned s1fmt = (ste0 >> 4) & 3, cdmax = (unsigned)(ste0 >> 59);
    uint64_t ctx = ste0 & BITS(51, 6);
    uint32_t ssid;
    if (w->pasid == IOFS_NEST_NO_PASID) {
        if (cdmax == 0) {
            ssid = 0;
        } else {
            switch (ste1 & 3) {                     /* S1DSS */
            case 1: return 1;
            case 2: ssid = 0; break;
            case 0: return fault(w, 1, IOFS_NEST_F_BAD_SSID, -EFAULT, 0, IOFS_NEST_CLASS_CD, w->iova);
            default: return fault(w, 1, IOFS_NEST_F_BAD_STE, -EFAULT, 0, IOFS_NEST_CLASS_CD, w->iova);
            }
        }
    } else {
        if (cdmax == 0 || (uint64_t)w->pasid >= (1ull << cdmax))
            return fault(w, 1, IOFS_NEST_F_BAD_SSID, -EFAULT, 0, IOFS_NEST_CLASS_CD, w->iova);
        ssid = w->pasid;
    }
    if (use_cache) {
        for (unsigned i = 0; i < CD_SLOTS; i++)
            if (d->cd[i].valid && d->cd[i].ssid == ssid) {
                *cd0 = d->cd[i].cd0;
                *cd1 = d->cd[i].cd1;
                return 0;
            }
    }
    uint64_t cdgpa, hva;
    if (cdmax == 0 || s1fmt == 0) {
        cdgpa = ctx + 64ull * ssid;
    } else if (s1fmt == 1 || s1fmt == 2) {
        unsigned split = s1fmt == 1 ? 6 : 10;       /* 64 / 1024 CDs per leaf table */
        uint64_t l1gpa = ctx + 8ull * (ssid >> split), l1;
        int rc = s1_load(w, l1gpa, 0, IOFS_NEST_CLASS_CD, &hva, &l1);
        if (rc)
            return rc;
        if (!(l1 & 1))
            return fault(w, 1, IOFS_NEST_F_BAD_SSID, -EFAULT, 0, IOFS_NEST_CLASS_CD, w->iova);
        cdgpa = (l1 & BITS(51, 12)) + 64ull * (ssid & ((1u << split) - 1));
    } else {
        return fault(w, 1, IOFS_NEST_F_BAD_STE, -EFAULT, 0, IOFS_NEST_CLASS_CD, w->iova);
    }
    int rc = s1_load(w, cdgpa, 0, IOFS_NEST_CLASS_CD, &hva, cd0);
    if (rc)
        return rc;
    rc = s1_load(w, cdgpa + 8, 0, IOFS_NEST_CLASS_CD, &hva, cd1);
    if (rc)
        return rc;
    /* CD sanity (ref §3.4): V, AA64, little-endian, 4 KiB TG0, T0SZ 16..39,
     * IPS a valid encoding. */
    uint64_t c0 = *cd0;
    if (!(c0 & CD0_V) || !(c0 & CD0_AA64) || (c0 & CD0_ENDI) || CD0_TG0(c0) != 0 ||
        CD0_T0SZ(c0) < 16 || CD0_T0SZ(c0) > 39 || CD0_IPS(c0) > 6)
        return fault(w, 1, IOFS_NEST_F_BAD_CD, -EFAULT, 0, IOFS_NEST_CLASS_CD, w->iova);
    if (use_cache) {
        unsigned slot = CD_SLOTS;
        for (unsigned i = 0; i < CD_SLOTS; i++)
            if (!d->cd[i].valid) { slot = i; break; }
        if (slot == CD_SLOTS)
            slot = d->cd_next++ % CD_SLOTS;         /* full: replace round-robin */
        d->cd[slot] = (struct cdc){ssid, 1, *cd0, *cd1};
    }
    return 0;
}

static const unsigned ips_bits[7] = {32, 36, 40, 42, 44, 48, 52};

static int smmu_walk(struct wctx *w, uint64_t cd0, uint64_t cd1, struct iofs_nest_result *r,
                     uint32_t *global)
{
    const struct iofs_nest_cfg *c = &w->d->cfg;
    unsigned acc = w->access;
    int priv = !!(acc & IOFS_NEST_PRIV), write = !!(acc & IOFS_NEST_WRITE);
    unsigned ias = 64 - CD0_T0SZ(cd0);
    unsigned oas = ips_bits[CD0_IPS(cd0)];
    if (oas > c->haw)
        oas = c->haw;
    uint64_t va = w->iova;
    if (cd0 & CD0_TBI0)
        va &= BITS(55, 0);
    unsigned start = ias > 39 ? 0 : ias > 30 ? 1 : 2;
    if ((va >> ias) != 0 || (cd0 & CD0_EPD0))
        return fault(w, 1, IOFS_NEST_F_TRANSLATION, -EFAULT, start, IOFS_NEST_CLASS_TT, w->iova);
    int httu = !!c->smmu_httu;
    int ha = httu && (cd0 & CD0_HA), hd = httu && (cd0 & CD0_HD);
    /* Top table: 2^(ias - shift(start)) entries, aligned to its size. */
    unsigned top_shift = PG_SHIFT + 9 * (3 - start);
    uint64_t top_bytes = 8ull << (ias - top_shift);
    uint64_t table = (cd1 & CD1_TTB0) & ~(top_bytes - 1);
    if (table >> oas)
        return fault(w, 1, IOFS_NEST_F_ADDR_SIZE, -EFAULT, start, IOFS_NEST_CLASS_TT, w->iova);
    int apt_ro = 0, apt_nouser = 0, xnt = 0, pxnt = 0;
    for (unsigned L = start; L <= 3; L++) {
        unsigned shift = PG_SHIFT + 9 * (3 - L);
        uint64_t egpa = table + 8 * ((va >> shift) & 511), hva, e;
        int rc = s1_load(w, egpa, L, IOFS_NEST_CLASS_TT, &hva, &e);
        if (rc)
            return rc;
        if (!(e & D_VALID))
            return fault(w, 1, IOFS_NEST_F_TRANSLATION, -EFAULT, L, IOFS_NEST_CLASS_TT, w->iova);
        int is_table = (e & D_TABLE) && L < 3;
        if (!(e & D_TABLE) && (L == 0 || L == 3))   /* block at L0 / L3: invalid */
            return fault(w, 1, IOFS_NEST_F_TRANSLATION, -EFAULT, L, IOFS_NEST_CLASS_TT, w->iova);
        if (is_table) {
            uint64_t next = e & D_OA;
            if (next >> oas)
                return fault(w, 1, IOFS_NEST_F_ADDR_SIZE, -EFAULT, L, IOFS_NEST_CLASS_TT, w->iova);
            apt_ro |= !!(e & D_APT1);
            apt_nouser |= !!(e & D_APT0);
            xnt |= !!(e & D_XNT);
            pxnt |= !!(e & D_PXNT);
            table = next;
            continue;
        }
        uint64_t size = 1ull << shift;
        uint64_t oa = e & D_OA & ~(size - 1);
        /* Leaf checks in order (ref §3.5): address size, access flag,
         * permission. */
        if (oa >> oas)
            return fault(w, 1, IOFS_NEST_F_ADDR_SIZE, -EFAULT, L, IOFS_NEST_CLASS_TT, w->iova);
        uint64_t ne = e;
        if (!(e & D_AF)) {
            if (ha)
                ne |= D_AF;
            else if (!(cd0 & CD0_AFFD))
                return fault(w, 1, IOFS_NEST_F_ACCESS_FLAG, -EFAULT, L, IOFS_NEST_CLASS_TT, w->iova);
        }
        /* AP[2] = 1 with DBM under HD is "writable, clean"; a write clears
         * AP[2] (the dirty state). APTable[1] keeps it read-only. */
        int clean = hd && (e & D_DBM) && (e & D_AP2) && !apt_ro;
        int ro = apt_ro || ((e & D_AP2) && !clean);
        int user_ok = (e & D_AP1) && !apt_nouser;
        unsigned perms = 0;
        if (priv || user_ok) {
            perms = IOFS_NEST_READ | (ro ? 0 : IOFS_NEST_WRITE);
            int xn = priv ? ((e & D_PXN) || pxnt) : ((e & D_UXN) || xnt);
            if ((cd0 & CD0_WXN) && !ro)
                xn = 1;
            if (!xn)
                perms |= IOFS_NEST_EXEC;
        }
        unsigned need = acc & (IOFS_NEST_READ | IOFS_NEST_WRITE | IOFS_NEST_EXEC);
        if ((perms & need) != need)
            return fault(w, 1, IOFS_NEST_F_PERMISSION, -EACCES, L, IOFS_NEST_CLASS_IN, w->iova);
        if (write && clean)
            ne &= ~D_AP2;
        note_upd(w, egpa, hva, e, ne, L);
        *global = !(e & D_NG);
        return finish(w, oa | (va & (size - 1)), size, perms, L, r);
    }
    return fault(w, 1, IOFS_NEST_F_TRANSLATION, -EFAULT, 3, IOFS_NEST_CLASS_TT, w->iova);
}

/* Bypass of stage 1: stage 2 alone. */
static int s2_only(struct wctx *w, struct iofs_nest_result *r)
{
    return finish(w, w->iova, 1ull << 63, IOFS_NEST_READ | IOFS_NEST_WRITE | IOFS_NEST_EXEC, 0, r);
}

/* One complete walk with A/D write-back; retries lost compares. *cacheable
 * says whether the result may go into the IOTLB. */
static int walk_once(struct iofs_nest *d, struct wctx *w, int use_cd_cache,
                     struct iofs_nest_result *r, uint32_t *global, int *cacheable)
{
    *global = 0;
    *cacheable = 1;
    for (int tries = 0; tries < IOFS_NEST_CAS_RETRIES; tries++) {
        w->nupd = 0;
        int rc;
        d->st.walks++;
        if (d->cfg.format == IOFS_NEST_FMT_VTD) {
            r->asid = 0;
            rc = vtd_walk(w, r);
        } else {
            uint64_t cd0 = 0, cd1 = 0;
            rc = smmu_cd(w, use_cd_cache, &cd0, &cd1);
            if (rc == 1) {
                *cacheable = 0;                     /* nothing of the guest's to cache */
                r->asid = 0;
                return s2_only(w, r);
            }
            if (rc)
                return rc;
            r->asid = CD0_ASID(cd0);
            rc = smmu_walk(w, cd0, cd1, r, global);
        }
        if (rc)
            return rc;
        rc = write_back(w);
        if (rc <= 0)
            return rc;
        d->st.cas_retries++;
    }
    return fault(w, 1, IOFS_NEST_F_RACE, -EAGAIN, 0, IOFS_NEST_CLASS_TT, w->iova);
}

static int check_access(unsigned access)
{
    if (access & ~IOFS_NEST_ACCESS_MASK)
        return -EINVAL;
    if (!(access & (IOFS_NEST_READ | IOFS_NEST_WRITE)))
        return -EINVAL;
    return 0;
}

int iofs_nest_walk(struct iofs_nest *d, uint32_t pasid, uint64_t iova, unsigned access,
                   struct iofs_nest_result *res, struct iofs_nest_fault *fault_out)
{
    if (check_access(access))
        return -EINVAL;
    struct iofs_nest_fault fdummy;
    struct iofs_nest_result rdummy;
    struct wctx w;
    wctx_init(&w, d, pasid, iova, access, fault_out ? fault_out : &fdummy);
    memset(w.f, 0, sizeof *w.f);
    uint32_t global;
    int cacheable;
    return walk_once(d, &w, 0, res ? res : &rdummy, &global, &cacheable);
}

int iofs_nest_translate(struct iofs_nest *d, uint32_t pasid, uint64_t iova, unsigned access,
                        struct iofs_nest_result *res, struct iofs_nest_fault *fault_out)
{
    if (check_access(access))
        return -EINVAL;
    struct iofs_nest_fault fdummy;
    struct iofs_nest_result rdummy;
    if (!res)
        res = &rdummy;
    struct wctx w;
    wctx_init(&w, d, pasid, iova, access, fault_out ? fault_out : &fdummy);
    w.f->stage = 0;
    uint64_t page = iova >> PG_SHIFT;
    unsigned priv = !!(access & IOFS_NEST_PRIV);
    unsigned need = access & (IOFS_NEST_READ | IOFS_NEST_WRITE | IOFS_NEST_EXEC);
    if (d->cap) {
        int32_t i = tlb_find(d, page, pasid, priv);
        if (i != NIL) {
            struct tlbe *x = &d->e[i];
            int ok = (x->perms & need) == need && (!(access & IOFS_NEST_WRITE) || x->dirty);
            if (ok && d->cfg.format == IOFS_NEST_FMT_SMMU) {
                /* The TLB is tagged by ASID: the CD in use now (cached or
                 * fetched) must carry the entry's ASID (ref §3.6, §5.2). */
                uint64_t cd0, cd1, faults = d->st.faults;
                struct iofs_nest_fault f2;
                struct wctx w2;
                wctx_init(&w2, d, pasid, iova, access, &f2);
                int rc = smmu_cd(&w2, 1, &cd0, &cd1);
                if (rc != 0)
                    ok = 0;                         /* the walk below reports it */
                else if (!x->global && CD0_ASID(cd0) != x->asid)
                    ok = 0;
                d->st.faults = faults;
            }
            if (ok) {
                uint64_t off = iova & (PG_SIZE - 1);
                if (d->lru_head != i) {
                    lru_unlink(d, i);
                    lru_push_front(d, i);
                }
                res->out = x->out + off;
                res->gpa = x->gpa + off;
                res->page_size = x->size;
                res->s1_size = x->s1_size;
                res->perms = x->perms;
                res->hit = 1;
                res->asid = x->asid;
                res->s1_level = x->s1_level;
                d->st.hits++;
                return 0;
            }
        }
    }
    d->st.misses++;
    uint32_t global;
    int cacheable;
    int rc = walk_once(d, &w, 1, res, &global, &cacheable);
    if (rc)
        return rc;
    if (d->cap && cacheable && res->page_size >= PG_SIZE) {
        uint64_t off = iova & (PG_SIZE - 1);
        uint64_t s1_first = (iova & ~(res->s1_size - 1)) >> PG_SHIFT;
        struct tlbe v = {
            .page = page, .out = res->out - off, .gpa = res->gpa - off,
            .s1_first = s1_first, .s1_last = s1_first + ((res->s1_size - 1) >> PG_SHIFT),
            .size = res->page_size, .s1_size = res->s1_size, .pasid = pasid,
            .asid = res->asid, .priv = (uint8_t)priv, .perms = (uint8_t)res->perms,
            .dirty = !!(access & IOFS_NEST_WRITE), .global = (uint8_t)global,
            .s1_level = res->s1_level,
        };
        tlb_insert(d, &v);
    }
    return 0;
}

int64_t iofs_nest_translate_batch(struct iofs_nest *d, uint32_t pasid, const uint64_t *iovas,
                                  size_t n, unsigned access, uint64_t *outs,
                                  struct iofs_nest_fault *fault_out)
{
    if (check_access(access))
        return -EINVAL;
    struct iofs_nest_result r;
    for (size_t i = 0; i < n; i++) {
        if (iofs_nest_translate(d, pasid, iovas[i], access, &r, fault_out))
            return (int64_t)i;
        outs[i] = r.out;
    }
    return (int64_t)n;
}

int64_t iofs_nest_translate_range(struct iofs_nest *d, uint32_t pasid, uint64_t iova,
                                  uint64_t len, unsigned access, struct iofs_seg *segs,
                                  size_t max_segs, struct iofs_nest_fault *fault_out)
{
    if (check_access(access))
        return -EINVAL;
    if (len && iova + (len - 1) < iova)
        return -EINVAL;
    size_t nseg = 0;
    int nospc = 0;
    uint64_t done = 0;
    struct iofs_nest_result r;
    while (done < len) {
        uint64_t at = iova + done;
        int rc = iofs_nest_translate(d, pasid, at, access, &r, fault_out);
        if (rc)
            return rc;
        uint64_t chunk = PG_SIZE - (at & (PG_SIZE - 1));
        if (r.page_size < PG_SIZE) {
            uint64_t ps = r.page_size;
            chunk = ps - (at & (ps - 1));
        }
        if (chunk > len - done)
            chunk = len - done;
        if (nseg && segs[nseg - 1].addr + segs[nseg - 1].len == r.out) {
            segs[nseg - 1].len += chunk;
        } else if (nseg < max_segs) {
            segs[nseg].addr = r.out;
            segs[nseg].len = chunk;
            nseg++;
        } else {
            nospc = 1;   /* keep going: a later fault takes precedence */
        }
        done += chunk;
    }
    return nospc ? -ENOSPC : (int64_t)nseg;
}

/* ---- invalidation ------------------------------------------------------- */

struct range_arg {
    int any_pasid, any_asid, asid_global;
    uint32_t pasid, asid;
    uint64_t first, last;   /* inclusive page numbers */
};

/* An entry is one 4 KiB piece of a stage-1 leaf; an invalidation that
 * touches any part of that leaf drops every piece of it, as it drops the
 * one hardware TLB entry of a block (a guest invalidates a 2 MiB block with
 * one TLBI at its address). */
static inline int overlaps(const struct tlbe *x, const struct range_arg *a)
{
    return x->s1_last >= a->first && x->s1_first <= a->last;
}

static int pred_range(const struct tlbe *x, const void *a_)
{
    const struct range_arg *a = a_;
    if (!overlaps(x, a))
        return 0;
    if (!a->any_pasid && x->pasid != a->pasid)
        return 0;
    return 1;
}

static int pred_va(const struct tlbe *x, const void *a_)
{
    const struct range_arg *a = a_;
    if (!overlaps(x, a))
        return 0;
    return a->any_asid || x->global || x->asid == a->asid;
}

static int pred_asid(const struct tlbe *x, const void *a_)
{
    const struct range_arg *a = a_;
    return !x->global && x->asid == a->asid;
}

static int pred_pasid(const struct tlbe *x, const void *a_)
{
    const struct range_arg *a = a_;
    return x->pasid == a->pasid;
}

static int pred_all(const struct tlbe *x, const void *a_)
{
    (void)x;
    (void)a_;
    return 1;
}

/* Pages of [addr, addr+len), clipped at 2^64. Returns 0 when empty. */
static int page_span(uint64_t addr, uint64_t len, uint64_t *first, uint64_t *last)
{
    if (!len)
        return 0;
    uint64_t end = addr + (len - 1);
    if (end < addr)
        end = ~0ull;
    *first = addr >> PG_SHIFT;
    *last = end >> PG_SHIFT;
    return 1;
}

int64_t iofs_nest_inv_range(struct iofs_nest *d, int any_pasid, uint32_t pasid,
                            uint64_t addr, uint64_t len)
{
    struct range_arg a = {.any_pasid = any_pasid, .pasid = pasid};
    if (!page_span(addr, len, &a.first, &a.last)) {
        d->st.inv_calls++;
        return 0;
    }
    return tlb_drop_if(d, pred_range, &a);
}

int64_t iofs_nest_inv_vtd(struct iofs_nest *d, uint64_t addr, uint64_t npages, uint32_t flags)
{
    /* ref §2.6 step 2 */
    if (flags & ~1u)
        return -EOPNOTSUPP;
    if (addr & (PG_SIZE - 1))
        return -EINVAL;
    if (npages == ~0ull) {
        if (addr)
            return -EINVAL;
        return tlb_drop_if(d, pred_all, NULL);
    }
    /* npages * 4 KiB, saturated; LEAF changes nothing here (no walk cache). */
    uint64_t len = npages > (~0ull >> PG_SHIFT) ? ~0ull : npages << PG_SHIFT;
    return iofs_nest_inv_range(d, 1, 0, addr, len);
}

int64_t iofs_nest_inv_pasid(struct iofs_nest *d, uint32_t pasid)
{
    struct range_arg a = {.pasid = pasid};
    return tlb_drop_if(d, pred_pasid, &a);
}

int64_t iofs_nest_inv_asid(struct iofs_nest *d, uint32_t asid)
{
    struct range_arg a = {.asid = asid};
    return tlb_drop_if(d, pred_asid, &a);
}

int64_t iofs_nest_inv_va(struct iofs_nest *d, uint32_t asid, uint64_t addr, uint64_t len)
{
    struct range_arg a = {.asid = asid, .any_asid = asid == IOFS_NEST_ANY_ASID};
    if (!page_span(addr, len, &a.first, &a.last)) {
        d->st.inv_calls++;
        return 0;
    }
    return tlb_drop_if(d, pred_va, &a);
}

int64_t iofs_nest_inv_all(struct iofs_nest *d)
{
    return tlb_drop_if(d, pred_all, NULL);
}

int64_t iofs_nest_inv_cd(struct iofs_nest *d, uint32_t ssid)
{
    /* Requests without SSID use CD 0 (ref §3.4). */
    uint32_t idx = ssid == IOFS_NEST_NO_PASID ? 0 : ssid;
    int64_t n = 0;
    for (unsigned i = 0; i < CD_SLOTS; i++)
        if (d->cd[i].valid && d->cd[i].ssid == idx) {
            d->cd[i].valid = 0;
            n++;
        }
    d->st.inv_calls++;
    d->st.cd_inv_entries += (uint64_t)n;
    return n;
}

int64_t iofs_nest_inv_cd_all(struct iofs_nest *d)
{
    int64_t n = 0;
    for (unsigned i = 0; i < CD_SLOTS; i++)
        if (d->cd[i].valid) {
            d->cd[i].valid = 0;
            n++;
        }
    d->st.inv_calls++;
    d->st.cd_inv_entries += (uint64_t)n;
    return n;
}

/* SMMUv3 command fields (ref §3.6 table). */
#define CMD_OP(c0)      ((unsigned)((c0) & 0xff))
#define F_NUM           BITS(16, 12)
#define F_SCALE         BITS(25, 20)
#define F_VMID          BITS(47, 32)
#define F_ASID          BITS(63, 48)
#define F_SSV           (1ull << 11)
#define F_SSID          BITS(31, 12)
#define F_SID           BITS(63, 32)
#define F_GLOBAL        (1ull << 9)
#define F_LEAF          (1ull << 0)
#define F_TTL           BITS(9, 8)
#define F_TG            BITS(11, 10)
#define F_ADDR          BITS(63, 12)
#define F_SIZE          BITS(5, 0)

int64_t iofs_nest_smmu_cmd(struct iofs_nest *d, const uint64_t cmd[2], uint32_t caps)
{
    uint64_t c0 = cmd[0], c1 = cmd[1];
    unsigned op = CMD_OP(c0);
    uint64_t ok0, ok1;
    switch (op) {
    case 0x10: ok0 = F_VMID; ok1 = 0; break;                              /* TLBI_NH_ALL */
    case 0x11: ok0 = F_VMID | F_ASID; ok1 = 0; break;                     /* TLBI_NH_ASID */
    case 0x12: ok0 = F_NUM | F_SCALE | F_VMID | F_ASID;                   /* TLBI_NH_VA */
               ok1 = F_LEAF | F_TTL | F_TG | F_ADDR; break;
    case 0x13: ok0 = F_NUM | F_SCALE | F_VMID;                            /* TLBI_NH_VAA */
               ok1 = F_LEAF | F_TTL | F_TG | F_ADDR; break;
    case 0x30: ok0 = 0; ok1 = 0; break;                                   /* TLBI_NSNH_ALL */
    case 0x40: ok0 = F_GLOBAL | F_SSV | F_SSID | F_SID;                   /* ATC_INV */
               ok1 = F_SIZE | F_ADDR; break;
    case 0x05: ok0 = F_SSID | F_SID; ok1 = F_LEAF; break;                 /* CFGI_CD */
    case 0x06: ok0 = F_SID; ok1 = 0; break;                               /* CFGI_CD_ALL */
    default: return -EIO;
    }
    if ((c0 & ~(ok0 | 0xffull)) || (c1 & ~ok1))
        return -EIO;
    uint64_t asid = (c0 & F_ASID) >> 48;
    if (!(caps & IOFS_NEST_SMMU_ASID16) && asid > 0xff)
        return -EIO;
    if (op == 0x12 || op == 0x13) {
        unsigned num = (unsigned)((c0 & F_NUM) >> 12), scale = (unsigned)((c0 & F_SCALE) >> 20);
        unsigned ttl = (unsigned)((c1 & F_TTL) >> 8), tg = (unsigned)((c1 & F_TG) >> 10);
        if ((num || scale || ttl || tg) && !(caps & IOFS_NEST_SMMU_RIL))
            return -EIO;
        if ((scale & 0x20) && !(caps & IOFS_NEST_SMMU_DS))
            return -EIO;
        if (tg == 0 && (num || scale || ttl))
            return -EIO;
        if (tg == 2 && ttl == 1 && !(caps & IOFS_NEST_SMMU_DS))
            return -EIO;
        if (tg != 0 && !num && !scale && !ttl)
            return -EIO;
        uint64_t addr = c1 & F_ADDR, len;
        if (tg == 0) {
            len = PG_SIZE;
        } else {
            unsigned gshift = tg == 1 ? 12 : tg == 2 ? 14 : 16;
            /* (NUM+1) << SCALE granules; at most 32 << (63 + 16): saturate */
            unsigned sh = scale + gshift;
            len = sh >= 58 ? ~0ull : (uint64_t)(num + 1) << sh;
        }
        return iofs_nest_inv_va(d, op == 0x13 ? IOFS_NEST_ANY_ASID : (uint32_t)asid, addr, len);
    }
    if (op == 0x40) {
        if (!(caps & IOFS_NEST_SMMU_ATS) || (c1 & F_SIZE) > 52)
            return -EIO;
        if ((c0 & (F_SSV | F_SSID | F_GLOBAL)) && !(caps & IOFS_NEST_SMMU_SSID))
            return -EIO;
        d->st.inv_calls++;
        return 0;                                   /* no ATC modelled */
    }
    if (op == 0x05) {
        if ((c0 & F_SSID) && !(caps & IOFS_NEST_SMMU_SSID))
            return -EIO;
        return iofs_nest_inv_cd(d, (uint32_t)((c0 & F_SSID) >> 12));
    }
    if (op == 0x06)
        return iofs_nest_inv_cd_all(d);
    if (op == 0x11)
        return iofs_nest_inv_asid(d, (uint32_t)asid);
    return iofs_nest_inv_all(d);                    /* NH_ALL, NSNH_ALL */
}

int iofs_nest_smmu_event(const struct iofs_nest_fault *f, uint32_t sid, uint32_t pasid,
                         uint64_t evt[4])
{
    unsigned type;
    int only_dw0 = 0;
    if (!f || !f->stage)
        return -EINVAL;
    switch (f->reason) {
    case IOFS_NEST_F_BAD_STE: type = 0x04; only_dw0 = 1; break;
    case IOFS_NEST_F_BAD_SSID: type = 0x08; only_dw0 = 1; break;
    case IOFS_NEST_F_BAD_CD: type = 0x0a; only_dw0 = 1; break;
    case IOFS_NEST_F_ADDR_SIZE: type = 0x11; break;
    case IOFS_NEST_F_ACCESS_FLAG: type = 0x12; break;
    case IOFS_NEST_F_PERMISSION: type = 0x13; break;
    case IOFS_NEST_F_TRANSLATION:
    case IOFS_NEST_F_RESERVED:
    case IOFS_NEST_F_NON_CANONICAL: type = 0x10; break;
    case IOFS_NEST_F_S2_WALK:
    case IOFS_NEST_F_S2_OUTPUT:
    case IOFS_NEST_F_MEMORY: type = f->err == -EACCES ? 0x13 : 0x10; break;
    default: return -EINVAL;
    }
    int ssv = pasid != IOFS_NEST_NO_PASID;
    evt[0] = type | (ssv ? (1ull << 11) | ((uint64_t)(pasid & 0xfffff) << 12) : 0)
             | ((uint64_t)sid << 32);
    evt[1] = evt[2] = evt[3] = 0;
    if (only_dw0)
        return 0;
    int s2 = f->stage == 2;
    evt[1] = ((f->access & IOFS_NEST_PRIV) ? 1ull << 33 : 0)
             | ((f->access & IOFS_NEST_EXEC) ? 1ull << 34 : 0)
             | ((f->access & IOFS_NEST_WRITE) ? 0 : 1ull << 35)
             | (s2 ? 1ull << 39 : 0) | ((uint64_t)(f->cls & 3) << 40);
    evt[2] = f->iova;
    if (s2)
        evt[3] = f->addr & BITS(51, 12);
    return 0;
}

int64_t iofs_nest_s2_changed(struct iofs_nest *d)
{
    return tlb_drop_if(d, pred_all, NULL);
}

int64_t iofs_nest_forget_dirty(struct iofs_nest *d)
{
    int64_t n = 0;
    for (int32_t i = d->lru_head; i != NIL; i = d->e[i].lnext)
        if (d->e[i].dirty) {
            d->e[i].dirty = 0;
            n++;
        }
    return n;
}

void iofs_nest_stats(const struct iofs_nest *d, struct iofs_nest_stats *out)
{
    *out = d->st;
    out->entries = d->used;
    out->capacity = d->cap;
    uint64_t n = 0;
    for (unsigned i = 0; i < CD_SLOTS; i++)
        n += d->cd[i].valid;
    out->cd_entries = n;
}

void iofs_nest_reset_stats(struct iofs_nest *d)
{
    memset(&d->st, 0, sizeof d->st);
}
