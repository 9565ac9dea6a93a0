/* Free IOVA space of an IOAS; see holes.h for the model and the contract.
 *
 * An ordered map u64 -> u64 (struct omap) is a list of blocks of sorted
 * keys, with the last key of each block in max[]. Blocks split when full
 * and are merged or evened out with a neighbour when under a quarter full,
 * so there are at most about 4 * len / IOFS_HOLES_BLK of them.
 *
 * Atomicity: an insert may need a new block and a larger block array.
 * omap_reserve() makes sure the next two inserts cannot fail; take() and
 * give() reserve in every map they may insert into before changing
 * anything, so they either fail with nothing changed or complete. Deletes
 * never allocate. */
#include "holes.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define BLK IOFS_HOLES_BLK
#define NCLS 65

struct blk {
    unsigned n;
    uint64_t key[BLK];
    uint64_t val[BLK];
};

struct omap {
    struct blk **b;         /* blocks in key order, nb of them */
    uint64_t *max;          /* max[i] = last key of b[i] */
    size_t nb, cap;         /* cap: room in b[] and max[] */
    uint64_t len;           /* keys */
    struct blk *spare[2];   /* blocks set aside by omap_reserve */
};

struct iofs_holes {
    struct omap all;        /* last -> start, every hole */
    struct omap cls[NCLS];  /* last -> start, the holes of one size class */
    uint64_t mask;          /* bit c: cls[c] not empty (c < 64) */
};

/* ---- ordered map ---------------------------------------------------------- */

/* First i in [0, n) with a[i] >= x, or n. */
static size_t lower_bound(const uint64_t *a, size_t n, uint64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The smallest key >= x: 1 and *k, *v, or 0. */
static int omap_ceil(const struct omap *m, uint64_t x, uint64_t *k, uint64_t *v)
{
    size_t i = lower_bound(m->max, m->nb, x);
    if (i == m->nb)
        return 0;
    const struct blk *b = m->b[i];
    size_t j = lower_bound(b->key, b->n, x);
    *k = b->key[j];
    *v = b->val[j];
    return 1;
}

static int omap_get(const struct omap *m, uint64_t key, uint64_t *v)
{
    uint64_t k;
    return omap_ceil(m, key, &k, v) && k == key;
}

/* Room for one more block in the arrays and a spare block for each of the
 * next `need` inserts. */
static int omap_prepare(struct omap *m, unsigned need)
{
    if (m->cap < m->nb + need) {
        size_t cap = m->cap ? 2 * m->cap : 8;
        while (cap < m->nb + need)
            cap *= 2;
        struct blk **b = realloc(m->b, cap * sizeof(*b));
        if (!b)
            return -ENOMEM;
        m->b = b;
        uint64_t *max = realloc(m->max, cap * sizeof(*max));
        if (!max)
            return -ENOMEM;
        m->max = max;
        m->cap = cap;
    }
    for (unsigned k = 0; k < need; k++)
        if (!m->spare[k] && !(m->spare[k] = malloc(sizeof(struct blk))))
            return -ENOMEM;
    return 0;
}

/* The next two inserts into m cannot fail. */
static int omap_reserve(struct omap *m)
{
    return omap_prepare(m, 2);
}

static struct blk *take_spare(struct omap *m)
{
    struct blk *b = m->spare[1] ? m->spare[1] : m->spare[0];
    if (b == m->spare[1])
        m->spare[1] = NULL;
    else
        m->spare[0] = NULL;
    return b;
}

static void insert_blk(struct omap *m, size_t at, struct blk *b)
{
    memmove(&m->b[at + 1], &m->b[at], (m->nb - at) * sizeof(*m->b));
    memmove(&m->max[at + 1], &m->max[at], (m->nb - at) * sizeof(*m->max));
    m->b[at] = b;
    m->max[at] = b->key[b->n - 1];
    m->nb++;
}

static void remove_blk(struct omap *m, size_t at)
{
    free(m->b[at]);
    memmove(&m->b[at], &m->b[at + 1], (m->nb - at - 1) * sizeof(*m->b));
    memmove(&m->max[at], &m->max[at + 1], (m->nb - at - 1) * sizeof(*m->max));
    m->nb--;
}

/* Insert key -> v, or replace the value of an existing key. 0 or -ENOMEM
 * (nothing changed; never after omap_reserve, for two inserts). */
static int omap_put(struct omap *m, uint64_t key, uint64_t v)
{
    if (omap_prepare(m, 1) < 0)
        return -ENOMEM;
    if (m->nb == 0) {
        struct blk *b = take_spare(m);
        b->n = 1;
        b->key[0] = key;
        b->val[0] = v;
        insert_blk(m, 0, b);
        m->len = 1;
        return 0;
    }
    size_t i = lower_bound(m->max, m->nb, key);
    if (i == m->nb)
        i--;                            /* past every key: the last block */
    struct blk *b = m->b[i];
    size_t j = lower_bound(b->key, b->n, key);
    if (j < b->n && b->key[j] == key) {
        b->val[j] = v;
        return 0;
    }
    if (b->n == BLK) {
        /* Split: the upper half goes to a new block after b. */
        struct blk *nb = take_spare(m);
        unsigned h = BLK / 2;
        nb->n = BLK - h;
        memcpy(nb->key, b->key + h, nb->n * sizeof(uint64_t));
        memcpy(nb->val, b->val + h, nb->n * sizeof(uint64_t));
        b->n = h;
        m->max[i] = b->key[h - 1];
        insert_blk(m, i + 1, nb);
        if (j > h) {
            b = nb;
            j -= h;
            i++;
        }
    }
    memmove(&b->key[j + 1], &b->key[j], (b->n - j) * sizeof(uint64_t));
    memmove(&b->val[j + 1], &b->val[j], (b->n - j) * sizeof(uint64_t));
    b->key[j] = key;
    b->val[j] = v;
    b->n++;
    m->max[i] = b->key[b->n - 1];
    m->len++;
    return 0;
}

/* Blocks l and l+1: one block if they fit, else the same fill each. */
static void rebalance(struct omap *m, size_t l)
{
    struct blk *a = m->b[l], *c = m->b[l + 1];
    if (a->n + c->n <= BLK) {
        memcpy(a->key + a->n, c->key, c->n * sizeof(uint64_t));
        memcpy(a->val + a->n, c->val, c->n * sizeof(uint64_t));
        a->n += c->n;
        m->max[l] = a->key[a->n - 1];
        remove_blk(m, l + 1);
        return;
    }
    unsigned want = (a->n + c->n) / 2;
    if (a->n < want) {
        unsigned k = want - a->n;       /* c's first k go to a's end */
        memcpy(a->key + a->n, c->key, k * sizeof(uint64_t));
        memcpy(a->val + a->n, c->val, k * sizeof(uint64_t));
        a->n += k;
        memmove(c->key, c->key + k, (c->n - k) * sizeof(uint64_t));
        memmove(c->val, c->val + k, (c->n - k) * sizeof(uint64_t));
        c->n -= k;
    } else {
        unsigned k = a->n - want;       /* a's last k go to c's front */
        memmove(c->key + k, c->key, c->n * sizeof(uint64_t));
        memmove(c->val + k, c->val, c->n * sizeof(uint64_t));
        memcpy(c->key, a->key + want, k * sizeof(uint64_t));
        memcpy(c->val, a->val + want, k * sizeof(uint64_t));
        c->n += k;
        a->n = want;
    }
    m->max[l] = a->key[a->n - 1];
    m->max[l + 1] = c->key[c->n - 1];
}

/* Remove key; 1 (and its value in *v) if it was there, else 0. */
static int omap_del(struct omap *m, uint64_t key, uint64_t *v)
{
    size_t i = lower_bound(m->max, m->nb, key);
    if (i == m->nb)
        return 0;
    struct blk *b = m->b[i];
    size_t j = lower_bound(b->key, b->n, key);
    if (b->key[j] != key)
        return 0;
    if (v)
        *v = b->val[j];
    memmove(&b->key[j], &b->key[j + 1], (b->n - j - 1) * sizeof(uint64_t));
    memmove(&b->val[j], &b->val[j + 1], (b->n - j - 1) * sizeof(uint64_t));
    b->n--;
    m->len--;
    if (b->n == 0) {
        remove_blk(m, i);
        return 1;
    }
    m->max[i] = b->key[b->n - 1];
    if (b->n < BLK / 4 && m->nb > 1)
        rebalance(m, i + 1 < m->nb ? i : i - 1);
    return 1;
}

static void omap_clear(struct omap *m)
{
    for (size_t i = 0; i < m->nb; i++)
        free(m->b[i]);
    free(m->b);
    free(m->max);
    free(m->spare[0]);
    free(m->spare[1]);
    memset(m, 0, sizeof(*m));
}

static int omap_check(const struct omap *m)
{
    uint64_t len = 0;
    for (size_t i = 0; i < m->nb; i++) {
        const struct blk *b = m->b[i];
        if (b->n == 0 || b->n > BLK || (m->nb > 1 && b->n < BLK / 4))
            return -EINVAL;
        if (m->max[i] != b->key[b->n - 1])
            return -EINVAL;
        if (i > 0 && m->b[i - 1]->key[m->b[i - 1]->n - 1] >= b->key[0])
            return -EINVAL;
        for (unsigned j = 1; j < b->n; j++)
            if (b->key[j - 1] >= b->key[j])
                return -EINVAL;
        len += b->n;
    }
    return len == m->len ? 0 : -EINVAL;
}

/* ---- holes ---------------------------------------------------------------- */

/* floor(log2(last - start + 1)); 64 for the whole space (the size wraps). */
static unsigned class_of(uint64_t start, uint64_t last)
{
    uint64_t size = last - start + 1;
    return size ? 63 - (unsigned)__builtin_clzll(size) : 64;
}

static void mark(struct iofs_holes *h, unsigned c)
{
    if (c < 64) {
        if (h->cls[c].len)
            h->mask |= 1ull << c;
        else
            h->mask &= ~(1ull << c);
    }
}

/* Reserved beforehand: cannot fail. */
static void add(struct iofs_holes *h, uint64_t s, uint64_t l)
{
    unsigned c = class_of(s, l);
    omap_put(&h->all, l, s);
    omap_put(&h->cls[c], l, s);
    mark(h, c);
}

static uint64_t del(struct iofs_holes *h, uint64_t l)
{
    uint64_t s = 0;
    omap_del(&h->all, l, &s);
    unsigned c = class_of(s, l);
    omap_del(&h->cls[c], l, NULL);
    mark(h, c);
    return s;
}

/* The hole ending at l now starts at s (reserved beforehand: cannot fail). */
static void move_start(struct iofs_holes *h, uint64_t l, uint64_t s)
{
    uint64_t old = 0;
    omap_get(&h->all, l, &old);
    unsigned c0 = class_of(old, l), c1 = class_of(s, l);
    omap_put(&h->all, l, s);
    if (c0 != c1) {
        omap_del(&h->cls[c0], l, NULL);
        mark(h, c0);
    }
    omap_put(&h->cls[c1], l, s);
    mark(h, c1);
}

struct iofs_holes *iofs_holes_new(void)
{
    struct iofs_holes *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    if (omap_reserve(&h->all) < 0 || omap_reserve(&h->cls[64]) < 0) {
        iofs_holes_destroy(h);
        return NULL;
    }
    add(h, 0, UINT64_MAX);
    return h;
}

void iofs_holes_destroy(struct iofs_holes *h)
{
    if (!h)
        return;
    omap_clear(&h->all);
    for (unsigned c = 0; c < NCLS; c++)
        omap_clear(&h->cls[c]);
    free(h);
}

int iofs_holes_take(struct iofs_holes *h, uint64_t start, uint64_t last)
{
    if (start > last)
        return -EINVAL;
    /* The holes that meet [start, last] are the run from the first one
     * ending at or after start; only the first can stick out on the left
     * and only the last on the right. */
    uint64_t fl, fs, ll = 0, ls = 0;
    if (!omap_ceil(&h->all, start, &fl, &fs) || fs > last)
        return 0;                       /* all used already */
    int right = 0;
    if (fl > last) {
        ll = fl;
        ls = fs;
        right = 1;
    } else if (omap_ceil(&h->all, last, &ll, &ls) && ls <= last && ll > last) {
        right = 1;
    }
    int left = fs < start;
    if (omap_reserve(&h->all) < 0 ||
        (left && omap_reserve(&h->cls[class_of(fs, start - 1)]) < 0) ||
        (right && omap_reserve(&h->cls[class_of(last + 1, ll)]) < 0))
        return -ENOMEM;

    if (right && ls <= start && fl == ll) {
        /* One hole holds the whole range (the usual case): it keeps its
         * key and loses its head, and its left part becomes a new hole. */
        move_start(h, ll, last + 1);
        if (left)
            add(h, fs, start - 1);
        return 0;
    }
    uint64_t l, s;
    while (omap_ceil(&h->all, start, &l, &s) && s <= last) {
        del(h, l);
        if (s < start)
            add(h, s, start - 1);
        if (l > last)
            add(h, last + 1, l);
    }
    return 0;
}

int iofs_holes_give(struct iofs_holes *h, uint64_t start, uint64_t last)
{
    if (start > last)
        return -EINVAL;
    uint64_t l, s;
    if (omap_ceil(&h->all, start, &l, &s) && s <= last)
        return -EINVAL;                 /* part of it is free already */
    /* Neighbours: a hole ending at start - 1, a hole starting at last + 1. */
    uint64_t before_s = 0, after_l = 0, after_s = 0;
    int before = start > 0 && omap_get(&h->all, start - 1, &before_s);
    int after = last < UINT64_MAX && omap_ceil(&h->all, last + 1, &after_l, &after_s) &&
                after_s == last + 1;
    uint64_t new_s = before ? before_s : start, new_l = after ? after_l : last;
    if (omap_reserve(&h->all) < 0 || omap_reserve(&h->cls[class_of(new_s, new_l)]) < 0)
        return -ENOMEM;
    if (before)
        del(h, start - 1);
    if (after)
        move_start(h, after_l, new_s);
    else
        add(h, new_s, last);
    return 0;
}

int iofs_holes_from(const struct iofs_holes *h, uint64_t iova, uint64_t *out)
{
    uint64_t l, s;
    if (!omap_ceil(&h->all, iova, &l, &s))
        return 0;
    out[0] = s;
    out[1] = l;
    return 1;
}

int iofs_holes_class_from(const struct iofs_holes *h, unsigned cls, uint64_t iova,
                          uint64_t *out)
{
    uint64_t l, s;
    if (cls >= NCLS || !omap_ceil(&h->cls[cls], iova, &l, &s))
        return 0;
    out[0] = s;
    out[1] = l;
    return 1;
}

uint64_t iofs_holes_classes(const struct iofs_holes *h)
{
    return h->mask;
}

uint64_t iofs_holes_count(const struct iofs_holes *h)
{
    return h->all.len;
}

int iofs_holes_check(const struct iofs_holes *h)
{
    if (omap_check(&h->all) < 0)
        return -EINVAL;
    uint64_t in_classes = 0;
    for (unsigned c = 0; c < NCLS; c++) {
        if (omap_check(&h->cls[c]) < 0)
            return -EINVAL;
        if (c < 64 && !!(h->mask & (1ull << c)) != (h->cls[c].len != 0))
            return -EINVAL;
        in_classes += h->cls[c].len;
        for (size_t i = 0; i < h->cls[c].nb; i++) {
            const struct blk *b = h->cls[c].b[i];
            for (unsigned j = 0; j < b->n; j++) {
                uint64_t s;
                if (class_of(b->val[j], b->key[j]) != c || !omap_get(&h->all, b->key[j], &s) ||
                    s != b->val[j])
                    return -EINVAL;
            }
        }
    }
    if (in_classes != h->all.len)
        return -EINVAL;
    int first = 1;
    uint64_t prev_l = 0;
    for (size_t i = 0; i < h->all.nb; i++) {
        const struct blk *b = h->all.b[i];
        for (unsigned j = 0; j < b->n; j++) {
            uint64_t s = b->val[j], l = b->key[j];
            if (s > l || (!first && (prev_l == UINT64_MAX || s <= prev_l + 1)))
                return -EINVAL;
            first = 0;
            prev_l = l;
        }
    }
    return 0;
}
