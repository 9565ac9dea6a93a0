/* Nested (2-D) translation for iommufs: a guest-owned stage-1 page table in
 * guest physical memory, walked through a host-owned stage 2 (an iofs_pt:
 * the nest-parent HWPT = the IOAS), with an IOTLB whose staleness is real.
 *
 * Source of every format fact: ../shared/reference/nesting.md ("ref" below).
 *   VT-d first stage (x86-64 4/5-level)    ref §2.3 (PASID-entry inputs),
 *                                          §2.4 (format and walk rules)
 *   the 2-D walk and where faults arise    ref §2.5, §3.5 (last paragraph)
 *   SMMUv3 vSTE, CD table, CD              ref §3.3, §3.4
 *   VMSAv8-64 4 KiB-granule stage 1        ref §3.5
 *   IOTLB contract                         ref §5.1-§5.3, §2.6, §3.6
 *
 * Addresses:
 *   IOVA  the stage-1 input (the device's address, PASID/SSID-tagged);
 *   GPA   guest physical = stage-1 output = stage-2 input (IOAS IOVA);
 *   HVA   stage-2 output: an address the memory accessor (struct
 *         iofs_nest_mem) can read and write: a host virtual address in a
 *         client process (optionally tagged with the owner in the bits from
 *         tag_shift up, as core/iommufd/hwpt.py tags them), or an address in
 *         a local buffer (tests).
 * With s2 == NULL, stage 2 is the identity (GPA == HVA, read/write).
 *
 * Not thread-safe: one thread at a time per nested domain and its s2.
 * Every int / int64_t function returns >= 0 on success or -errno.
 *
 * Wiring into an iommufd nested HWPT (a sketch for core/):
 *   alloc   VTD_S1: cfg = {FMT_VTD, flags, pgtbl_addr, addr_width, fs1gp =
 *           cap FS1GP, haw}; check addr_width / SRE / EAFE against the
 *           advertised cap/ecap at attach (ref §2.3), not here.
 *           ARM_SMMUV3: cfg = {FMT_SMMU, ste = the vSTE, haw = IDR5.OAS bits}.
 *           s2 = the parent's iofs_pt; mem = PROC with tag_shift 57 and
 *           pids[tag] = the owner of each tag (core/iommufd/hwpt.py), kept
 *           current with iofs_nest_set_mem when tags change.
 *   DMA     iofs_nest_translate_range(pasid or NO_PASID, iova, len, access)
 *           -> HVA segments for iofs_vm_rw_segs; a fault gives stage /
 *           reason / addr for the fault queue, vEVENTQ (SMMU: stage 1 only,
 *           ref §3.7) and `info`. A/D are written page by page as the range
 *           is walked (a later page's fault does not undo an earlier page's).
 *   HWPT_INVALIDATE  VT-d: iofs_nest_inv_vtd per entry (its -errno is the
 *           entry's). SMMU vIOMMU: TLBI_NH_ASID -> inv_asid, NH_VA -> inv_va
 *           (range from NUM/SCALE/TG), NH_VAA -> inv_va(ANY_ASID), NH_ALL /
 *           NSNH_ALL -> inv_all, CFGI_CD -> inv_cd, CFGI_CD_ALL -> inv_cd_all
 *           on the domain the vSID's device is attached to.
 *   parent  every unmap / replace on the parent IOAS -> iofs_nest_s2_changed
 *           on every nested domain over it (the library cannot see stage-2
 *           changes itself; a missed call leaves stale stage-2 results =
 *           DMA into unmapped memory); GET_DIRTY_BITMAP that clears ->
 *           iofs_nest_forget_dirty.
 *   info    iofs_nest_stats: hits, misses, invalidations, entries.
 *
 * Modelling choices (within ref §5.2 "must drop / may drop more"):
 *   - entries are per 4 KiB input page even under larger leaves; an
 *     invalidation drops every entry whose stage-1 leaf overlaps the range
 *     (one TLBI at a 2 MiB block's address drops all of the block, as on
 *     hardware), and nothing beyond (hardware may drop the aligned
 *     power-of-two cover, ref §2.6): a too-narrow invalidation stays
 *     visible here where some hardware would hide it;
 *   - no walk (paging-structure) caches: LEAF=1 and LEAF=0 drop the same;
 *   - the SMMU TLB is keyed by SSID and tagged with the ASID (and nG): a hit
 *     also needs the CD in use (CD cache) to carry that ASID;
 *   - stage 2 less than 4 KiB (mock 2 KiB granule) is not cached;
 *   - SMMU bypass (Config bypass, S1DSS bypass) is stage 2 alone, uncached. */
#ifndef IOFS_NESTED_H
#define IOFS_NESTED_H
#include <stdint.h>
#include <stddef.h>
#include "pagetable.h"
#include "procmem.h"

/* Stage-1 formats. */
#define IOFS_NEST_FMT_VTD   1   /* VT-d first stage, ref §2.4 */
#define IOFS_NEST_FMT_SMMU  2   /* SMMUv3 CD table + VMSAv8-64 4 KiB, ref §3.4/§3.5 */

/* VT-d flags (iommu_hwpt_vtd_s1.flags, ref §1.3, §2.3). */
#define IOFS_NEST_VTD_SRE   1u
#define IOFS_NEST_VTD_EAFE  2u
#define IOFS_NEST_VTD_WPE   4u

/* Request bits (access). */
#define IOFS_NEST_READ   1u
#define IOFS_NEST_WRITE  2u
#define IOFS_NEST_PRIV   4u   /* supervisor (VT-d PMR=1) / privileged (SMMU) */
#define IOFS_NEST_EXEC   8u   /* execute request */
#define IOFS_NEST_ACCESS_MASK 15u

/* pasid argument of a request without PASID / SubstreamID. */
#define IOFS_NEST_NO_PASID 0xffffffffu
/* asid argument meaning "every ASID" (TLBI_NH_VAA). */
#define IOFS_NEST_ANY_ASID 0xffffffffu

/* Fault reasons (struct iofs_nest_fault.reason). */
#define IOFS_NEST_F_TRANSLATION   1  /* S1 not present / invalid descriptor / EPD0 / input beyond IAS */
#define IOFS_NEST_F_PERMISSION    2  /* S1 R/W, U/S, XD, AP, APTable, XN; supervisor without SRE */
#define IOFS_NEST_F_RESERVED      3  /* VT-d reserved bit set (ref §2.4) */
#define IOFS_NEST_F_NON_CANONICAL 4  /* VT-d input not canonical (ref §2.4) */
#define IOFS_NEST_F_ADDR_SIZE     5  /* SMMU table/output IPA >= 2^IPS (ref §3.5) */
#define IOFS_NEST_F_ACCESS_FLAG   6  /* SMMU AF == 0, HA == 0, AFFD == 0 (ref §3.5) */
#define IOFS_NEST_F_BAD_STE       7  /* SMMU vSTE abort / V=0 / bad S1Fmt (ref §3.3) */
#define IOFS_NEST_F_BAD_CD        8  /* SMMU CD illegal (ref §3.4) */
#define IOFS_NEST_F_BAD_SSID      9  /* SMMU C_BAD_SUBSTREAMID (ref §3.4) */
#define IOFS_NEST_F_S2_WALK      10  /* stage 2 failed on a table/CD fetch or an A/D write-back */
#define IOFS_NEST_F_S2_OUTPUT    11  /* stage 2 failed on the final output address */
#define IOFS_NEST_F_MEMORY       12  /* the stage-2 output address could not be read/written */
#define IOFS_NEST_F_RACE         13  /* A/D compare-and-set lost IOFS_NEST_CAS_RETRIES times */

/* SMMU event classes (ref §3.7 CLASS). */
#define IOFS_NEST_CLASS_CD 0
#define IOFS_NEST_CLASS_TT 1
#define IOFS_NEST_CLASS_IN 2

#define IOFS_NEST_CAS_RETRIES 8

struct iofs_nest_fault {
    uint32_t stage;     /* 1 or 2 (0: no fault) */
    uint32_t reason;    /* IOFS_NEST_F_* */
    int32_t  err;       /* the -errno the call returned */
    uint32_t level;     /* S1 level where it arose (VT-d 0=PT..4=PML5; SMMU 0..3 = L0..L3) */
    uint32_t cls;       /* IOFS_NEST_CLASS_* (where in the walk) */
    uint32_t access;    /* the request */
    uint64_t iova;      /* the stage-1 input address of the request */
    uint64_t addr;      /* faulting address: the IOVA for S1 faults, the GPA for S2
                           faults (table/CD entry GPA, or the output GPA) */
};

struct iofs_nest_result {
    uint64_t out;        /* stage-2 output (HVA) of the byte */
    uint64_t gpa;        /* stage-1 output (GPA) of the byte */
    uint64_t page_size;  /* bytes this translation is valid for (cached per 4 KiB) */
    uint64_t s1_size;    /* stage-1 leaf size */
    uint32_t perms;      /* IOFS_NEST_* requests the combined entry allows */
    uint32_t hit;        /* 1: served by the IOTLB */
    uint32_t asid;       /* SMMU: ASID of the CD used; VT-d: 0 */
    uint32_t s1_level;   /* level of the stage-1 leaf */
};

/* Configuration, fixed per nested domain (ref §2.3 for VT-d: the PASID
 * entry fields; ref §3.3 for SMMU: the vSTE). */
struct iofs_nest_cfg {
    uint32_t format;      /* IOFS_NEST_FMT_* */
    uint32_t vtd_flags;   /* IOFS_NEST_VTD_*; unknown bits ignored (ref §2.3) */
    uint64_t pgtbl_addr;  /* VT-d FSPTPTR (GPA; low 12 bits dropped, ref §2.3) */
    uint32_t addr_width;  /* VT-d: 48 (4-level) or 57 (5-level) */
    uint32_t fs1gp;       /* VT-d cap FS1GP: 1 GiB leaves allowed (else PS in a PDPTE is reserved) */
    uint32_t haw;         /* VT-d address width of S1 entries ([51:haw] reserved), 32..52;
                             SMMU: IDR5.OAS in bits (32..52) */
    uint32_t smmu_httu;   /* SMMU: honour CD.HA/HD (AF / dirty updates); 0 = treat as 0 (ref §3.4) */
    uint64_t ste[2];      /* SMMU vSTE dwords 0/1 (ref §3.3) */
};

/* Stage-2 output accessor. */
#define IOFS_NEST_MEM_LOCAL 1   /* HVA a is local[a - origin], a in [origin, origin+size) */
#define IOFS_NEST_MEM_PROC  2   /* HVA a is an address in pid[tag(a)] (process_vm_readv/writev) */
#define IOFS_NEST_MAX_TAGS 64
struct iofs_nest_mem {
    uint32_t kind;
    uint32_t tag_shift;           /* PROC: bits >= tag_shift select pids[]; 0 = untagged (pids[0]) */
    uint8_t *local;
    uint64_t origin;
    uint64_t size;
    int32_t pids[IOFS_NEST_MAX_TAGS];
};

struct iofs_nest_stats {
    uint64_t hits, misses, walks, fills, evictions;
    uint64_t inv_calls, inv_entries, cd_inv_entries;
    uint64_t entries, capacity, cd_entries;
    uint64_t faults, ad_writes, cas_retries;
};

struct iofs_nest;

/* A nested domain over s2 (NULL: identity stage 2) with an IOTLB of
 * `capacity` 4 KiB entries (0: no caching; at most 1 << 24). The cfg and
 * mem are copied; s2 is borrowed (must outlive the domain or be replaced).
 * NULL with errno EINVAL (bad cfg: unknown format; VT-d addr_width not 48/57,
 * haw outside 32..52; SMMU haw outside 32..52) or ENOMEM.
 * VT-d attach-time checks against cap/ecap (ref §2.3) belong to the caller. */
struct iofs_nest *iofs_nest_new(const struct iofs_nest_cfg *cfg, struct iofs_pt *s2,
                                const struct iofs_nest_mem *mem, uint64_t capacity);
void iofs_nest_free(struct iofs_nest *d);
int iofs_nest_set_mem(struct iofs_nest *d, const struct iofs_nest_mem *mem);
/* Replace stage 2 (drops every cached translation, as a stage-2 change). */
int iofs_nest_set_s2(struct iofs_nest *d, struct iofs_pt *s2);
/* New capacity; LRU entries beyond it are evicted. -EINVAL above 1 << 24. */
int iofs_nest_set_capacity(struct iofs_nest *d, uint64_t capacity);

/* Translate the byte at iova for `access` (IOFS_NEST_*; READ and/or WRITE
 * and optional PRIV/EXEC) from PASID/SSID `pasid` (IOFS_NEST_NO_PASID:
 * none). Served from the IOTLB when a cached entry allows the access (and,
 * for a write, D is already recorded); otherwise the 2-D walk runs, A/D (EA)
 * bits are written back with compare-and-set, and the result is cached.
 * res / fault may be NULL. Returns 0; -EFAULT (translation, reserved,
 * non-canonical, address-size, access-flag, bad STE/CD/SSID, stage-2
 * not mapped, memory); -EACCES (permission at stage 1 or 2); -EAGAIN (A/D
 * race lost); -EINVAL (unknown access bits, or access without READ/WRITE).
 * fault is filled on every -EFAULT/-EACCES/-EAGAIN. */
int iofs_nest_translate(struct iofs_nest *d, uint32_t pasid, uint64_t iova, unsigned access,
                        struct iofs_nest_result *res, struct iofs_nest_fault *fault);
/* The same 2-D walk without consulting or filling the IOTLB (A/D still written). */
int iofs_nest_walk(struct iofs_nest *d, uint32_t pasid, uint64_t iova, unsigned access,
                   struct iofs_nest_result *res, struct iofs_nest_fault *fault);
/* n translations (via the IOTLB) of outs[i] = HVA; returns how many succeeded
 * before the first failure (its fault in *fault). */
int64_t iofs_nest_translate_batch(struct iofs_nest *d, uint32_t pasid, const uint64_t *iovas,
                                  size_t n, unsigned access, uint64_t *outs,
                                  struct iofs_nest_fault *fault);
/* The DMA path: [iova, iova+len) into HVA segments (contiguous pieces
 * merged). Returns segment count; -ENOSPC more than max_segs; -EINVAL
 * iova+len wraps; faults as iofs_nest_translate (fault->iova = first
 * failing byte). */
int64_t iofs_nest_translate_range(struct iofs_nest *d, uint32_t pasid, uint64_t iova,
                                  uint64_t len, unsigned access, struct iofs_seg *segs,
                                  size_t max_segs, struct iofs_nest_fault *fault);

/* --- invalidation (ref §5.2) ---------------------------------------------
 * Range: every entry of `pasid` (IOFS_NEST_NO_PASID entries included only
 * when pasid == IOFS_NEST_NO_PASID; any_pasid != 0: every PASID) whose
 * stage-1 leaf overlaps [addr, addr + len); len 0 drops nothing; a range
 * reaching past 2^64 is clipped. Returns entries dropped. */
int64_t iofs_nest_inv_range(struct iofs_nest *d, int any_pasid, uint32_t pasid,
                            uint64_t addr, uint64_t len);
/* VT-d IOMMU_HWPT_INVALIDATE entry (ref §2.6): addr 4 KiB-aligned, npages
 * (U64_MAX with addr 0 = all), flags LEAF only; applies to every PASID of the
 * domain. -EOPNOTSUPP unknown flags; -EINVAL misaligned addr or
 * npages == U64_MAX with addr != 0. npages 0 drops nothing. */
int64_t iofs_nest_inv_vtd(struct iofs_nest *d, uint64_t addr, uint64_t npages, uint32_t flags);
int64_t iofs_nest_inv_pasid(struct iofs_nest *d, uint32_t pasid);
/* SMMU TLBI_NH_ASID: non-global entries whose ASID is asid. */
int64_t iofs_nest_inv_asid(struct iofs_nest *d, uint32_t asid);
/* SMMU TLBI_NH_VA (asid) / TLBI_NH_VAA (IOFS_NEST_ANY_ASID): entries of that
 * ASID and global entries overlapping [addr, addr+len). */
int64_t iofs_nest_inv_va(struct iofs_nest *d, uint32_t asid, uint64_t addr, uint64_t len);
/* Everything (VT-d all, SMMU TLBI_NH_ALL / NSNH_ALL). CD cache stays. */
int64_t iofs_nest_inv_all(struct iofs_nest *d);
/* SMMU CFGI_CD (ssid; IOFS_NEST_NO_PASID = the CD used without SSID) and
 * CFGI_CD_ALL: cached CDs only; TLB entries stay (ref §5.2). */
int64_t iofs_nest_inv_cd(struct iofs_nest *d, uint32_t ssid);
int64_t iofs_nest_inv_cd_all(struct iofs_nest *d);
/* One raw SMMUv3 command of iommu_viommu_arm_smmuv3_invalidate (ref §3.6),
 * validated as the 7.3 driver does (any failure -EIO: unknown opcode, a bit
 * outside the opcode's fields, ASID above 8 bits without ASID16, range
 * fields without RIL, SCALE[5] without DS, the reserved range encodings,
 * ATC_INV without ATS or Size > 52, SSID fields without substreams) and
 * applied to this domain: TLBI_NH_ALL / NSNH_ALL -> all; NH_ASID; NH_VA /
 * NH_VAA over Address (TG = 0: its 4 KiB page; else (NUM+1) << SCALE
 * granules of TG); CFGI_CD(SSID) / CFGI_CD_ALL -> the CD cache; ATC_INV ->
 * nothing (no ATC modelled). The VMID and SID fields are not looked at:
 * the caller routes a command to the domain of the vSID's device (CFGI_*,
 * ATC_INV) or to every domain of the vIOMMU (TLBI_*). Returns entries
 * dropped. */
#define IOFS_NEST_SMMU_RIL    1u   /* IDR3.RIL */
#define IOFS_NEST_SMMU_ASID16 2u   /* IDR0.ASID16 */
#define IOFS_NEST_SMMU_DS     4u   /* IDR5.DS */
#define IOFS_NEST_SMMU_ATS    8u   /* IDR0.ATS */
#define IOFS_NEST_SMMU_SSID  16u   /* IDR1.SSIDSIZE != 0 */
int64_t iofs_nest_smmu_cmd(struct iofs_nest *d, const uint64_t cmd[2], uint32_t caps);
/* The SMMUv3 event record (iommu_vevent_arm_smmuv3, ref §3.7) for a fault
 * of iofs_nest_translate/walk on an SMMU domain, with StreamID = sid (the
 * vSID for a vEVENTQ). EventType: C_BAD_STE 0x04, C_BAD_SUBSTREAMID 0x08,
 * C_BAD_CD 0x0a (dword0 only), F_TRANSLATION 0x10, F_ADDR_SIZE 0x11,
 * F_ACCESS 0x12, F_PERMISSION 0x13; SSV/SubstreamID when pasid !=
 * IOFS_NEST_NO_PASID; dword1 RnW (read), PnU (PRIV), InD (EXEC), S2,
 * CLASS; dword2 InputAddr = the IOVA; dword3 IPA[51:12] for stage-2
 * faults. Stage-2 faults are not forwarded to a guest (ref §3.7): the
 * caller decides. Returns 0; -EINVAL for no fault or an A/D race. */
int iofs_nest_smmu_event(const struct iofs_nest_fault *f, uint32_t sid, uint32_t pasid,
                         uint64_t evt[4]);
/* Stage 2 changed (IOAS unmap / map-replace on the parent): every combined
 * entry goes (ref §5.2, §5.4). */
int64_t iofs_nest_s2_changed(struct iofs_nest *d);
/* Dirty bits of stage 2 were cleared (GET_DIRTY_BITMAP without NO_CLEAR,
 * ref §6): cached entries forget that D is recorded, so the next write
 * through them walks again. Returns entries touched. */
int64_t iofs_nest_forget_dirty(struct iofs_nest *d);

void iofs_nest_stats(const struct iofs_nest *d, struct iofs_nest_stats *out);
void iofs_nest_reset_stats(struct iofs_nest *d);

/* The CAS primitive on guest memory (exported for tests): reads the 64-bit
 * word at HVA a; if it equals expect, writes desired. *seen = the value read.
 * Returns 1 written, 0 mismatch, -EFAULT. */
int iofs_nest_mem_cas64(const struct iofs_nest_mem *mem, uint64_t a, uint64_t expect,
                        uint64_t desired, uint64_t *seen);
int iofs_nest_mem_read64(const struct iofs_nest_mem *mem, uint64_t a, uint64_t *val);
#endif
