/* G.722 ADPCM coding of eight calls side by side: each 32-bit lane of an AVX2 register carries one
 * call's band states through the steps of encode_bands (g722.c), in the same integer arithmetic, so
 * each lane's codes are those of the per-call coder, to the bit. One call's codes form a serial chain
 * (each adapts the predictor the next one uses: about 40 ns a code for one call on its own); eight calls'
 * chains are independent, so one tick's frames of several calls are coded together (sk_enc24k_finish):
 * about 10 ns a code per call. At SIMD level 2 (AVX-512 BW) g722_lanes_bw.c codes them instead, both bands
 * of a call in one register's 16-bit lanes.
 *
 * Arithmetic that differs in form from g722.c (same values):
 * - (x * 32640) >> 15 is x + ((-x) >> 8), and (x * 32512) >> 15 is x + ((-x) >> 7): floor(x - x/256)
 *   and floor(x - x/128), with no multiply;
 * - a product of the scale factor det (0 < det <= 32064: both 16-bit halves known) with a 16-bit value
 *   is one pmaddwd: det's high half is zero, so the high halves' product adds nothing;
 * - the 6-bit quantiser counts its thresholds (q6[j] * det) >> 12 on 16-bit halves, two to a lane, each
 *   from one unsigned high multiply by 16 q6[j] (quant6_v);
 * - the lower band's code assignment (code6) is arithmetic: 62 - i, or when negative 64 - i for i <= 2
 *   and 34 - i above;
 * - sat16(2 d) of each stored difference is kept beside the coefficients (FILTEZ's factor), and its
 *   sign is that of d (UPZERO's comparison).
 */
#include "sk_internal.h"

#include "g722_tables.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SK_NO_DISPATCH)
#define LANES_AVX2 1
#endif

int sk_g722_lanes_ready(void)
{
#ifdef LANES_AVX2
    return sk_simd_active() > 0;
#else
    return 0;
#endif
}

void sk_lane_groups(const void *items, int count, sk_lane_take_fn *take, sk_lane_finish_fn *finish)
{
    int members[SK_G722_LANES];
    int g = 0, n0 = 0;
    for (int i = 0; i < count; i++) {
        const int n = take(items, i);
        if (n <= 0)
            continue;
        if (g > 0 && n != n0) {
            finish(items, members, g, n0);
            g = 0;
        }
        members[g++] = i;
        n0 = n;
        if (g == SK_G722_LANES) {
            finish(items, members, g, n0);
            g = 0;
        }
    }
    if (g > 0)
        finish(items, members, g, n0);
}

#ifndef LANES_AVX2
void sk_g722_code_lanes(sk_g722_encoder *const e[SK_G722_LANES], const int32_t *const xl[SK_G722_LANES],
                        const int32_t *const xh[SK_G722_LANES], int n, unsigned char *const out[SK_G722_LANES])
{
    for (int l = 0; l < SK_G722_LANES; l++)
        sk_g722_code(e[l], xl[l], xh[l], n, out[l]);
}

void sk_g722_decode_lanes(sk_g722_decoder *const d[SK_G722_LANES], const unsigned char *const in[SK_G722_LANES], int n,
                          int16_t *const ev[SK_G722_LANES], int16_t *const od[SK_G722_LANES])
{
    for (int l = 0; l < SK_G722_LANES; l++)
        sk_g722_decode_bands(d[l], in[l], n, ev[l], od[l]);
}
#else
#include <immintrin.h>

typedef __m256i v8;
#define V_FN static inline __attribute__((always_inline, target("avx2")))
#define LANES_FN __attribute__((target("avx2")))

V_FN v8 k8(int x)
{
    return _mm256_set1_epi32(x);
}

V_FN v8 sat16v(v8 x)
{
    return _mm256_max_epi32(_mm256_min_epi32(x, k8(32767)), k8(-32768));
}

V_FN v8 clampv(v8 x, int lo, int hi)
{
    return _mm256_max_epi32(_mm256_min_epi32(x, k8(hi)), k8(lo));
}

/* (a * b) >> 15 for a in [0, 32767] and b a 16-bit value (see the file comment) */
V_FN v8 det_mul15(v8 det, v8 b)
{
    return _mm256_srai_epi32(_mm256_madd_epi16(det, b), 15);
}

/* a where the sign bit of mask's 32-bit lane is clear, else b */
V_FN v8 select_by_sign(v8 a, v8 b, v8 mask)
{
    return _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), _mm256_castsi256_ps(mask)));
}

/* t[idx] for idx in 0..15, the table in two registers */
V_FN v8 lut16(const v8 t[2], v8 idx)
{
    const v8 lo = _mm256_permutevar8x32_epi32(t[0], idx), hi = _mm256_permutevar8x32_epi32(t[1], idx);
    return select_by_sign(lo, hi, _mm256_slli_epi32(idx, 28)); /* bit 3 of idx */
}

/* t[idx] for idx in 0..31, the table in four registers */
V_FN v8 lut32(const v8 t[4], v8 idx)
{
    const v8 b3 = _mm256_slli_epi32(idx, 28), b4 = _mm256_slli_epi32(idx, 27);
    const v8 lo = select_by_sign(_mm256_permutevar8x32_epi32(t[0], idx), _mm256_permutevar8x32_epi32(t[1], idx),
                                 b3);
    const v8 hi = select_by_sign(_mm256_permutevar8x32_epi32(t[2], idx), _mm256_permutevar8x32_epi32(t[3], idx),
                                 b3);
    return select_by_sign(lo, hi, b4);
}

typedef struct {
    v8 s, sp, sz, r0, r1, p0, p1, a1, a2, nb, det;
    v8 r0x2;  /* sat16(2 * r0): FILTEP's second factor */
    v8 d2[6]; /* sat16(2 * d(n-1-i)) */
    v8 b[6];
} lane_band;

/* LOGSCL/SCALEL or LOGSCH/SCALEH: adapt_scale of g722.c */
V_FN void adapt_scale_v(lane_band *b, v8 multiplier, int nb_max, int shift_base, const v8 ilb_t[4])
{
    const v8 decayed = _mm256_add_epi32(b->nb, _mm256_srai_epi32(_mm256_sub_epi32(k8(0), b->nb), 7));
    v8 nb = _mm256_add_epi32(decayed, multiplier);
    nb = clampv(nb, 0, nb_max);
    b->nb = nb;
    const v8 shift = _mm256_sub_epi32(k8(shift_base + 1), _mm256_srai_epi32(nb, 11));
    const v8 base = lut32(ilb_t, _mm256_and_si256(_mm256_srai_epi32(nb, 6), k8(31)));
    b->det = _mm256_slli_epi32(_mm256_srlv_epi32(_mm256_slli_epi32(base, 1), shift), 2);
}

/* Block 4: predictor_update of g722.c. */
V_FN void predictor_update_v(lane_band *b, v8 d)
{
    const v8 r = sat16v(_mm256_add_epi32(b->s, d));
    const v8 p = sat16v(_mm256_add_epi32(b->sz, d));
    const v8 a1 = b->a1, a2 = b->a2;
    const v8 diff1 = _mm256_srai_epi32(_mm256_xor_si256(p, b->p0), 31);
    const v8 diff2 = _mm256_srai_epi32(_mm256_xor_si256(p, b->p1), 31);
    const v8 eq1 = _mm256_xor_si256(diff1, k8(-1));

    /* UPPOL2 */
    const v8 w2 = sat16v(_mm256_sub_epi32(_mm256_xor_si256(_mm256_slli_epi32(a1, 2), eq1), eq1));
    v8 na2 = _mm256_sub_epi32(k8(128), _mm256_and_si256(diff2, k8(256)));
    na2 = _mm256_add_epi32(na2, _mm256_srai_epi32(w2, 7));
    na2 = _mm256_add_epi32(na2, _mm256_add_epi32(a2, _mm256_srai_epi32(_mm256_sub_epi32(k8(0), a2), 7)));
    na2 = clampv(na2, -12288, 12288);

    /* UPPOL1 */
    v8 na1 = _mm256_sub_epi32(k8(192), _mm256_and_si256(diff1, k8(384)));
    na1 = _mm256_add_epi32(na1, _mm256_add_epi32(a1, _mm256_srai_epi32(_mm256_sub_epi32(k8(0), a1), 8)));
    const v8 lim = _mm256_sub_epi32(k8(15360), na2);
    na1 = _mm256_min_epi32(_mm256_max_epi32(na1, _mm256_sub_epi32(k8(0), lim)), lim);

    /* UPZERO with the old differences' signs, DELAYA, FILTEZ with the new ones */
    const v8 step = _mm256_andnot_si256(_mm256_cmpeq_epi32(d, k8(0)), k8(128));
    for (int i = 0; i < 6; i++) {
        const v8 m = _mm256_srai_epi32(_mm256_xor_si256(b->d2[i], d), 31);
        const v8 decay = _mm256_add_epi32(b->b[i], _mm256_srai_epi32(_mm256_sub_epi32(k8(0), b->b[i]), 8));
        b->b[i] = _mm256_add_epi32(_mm256_sub_epi32(_mm256_xor_si256(step, m), m), decay);
    }
    for (int i = 5; i > 0; i--)
        b->d2[i] = b->d2[i - 1];
    b->d2[0] = sat16v(_mm256_add_epi32(d, d));
    v8 sz = k8(0);
    for (int i = 5; i >= 0; i--)
        sz = sat16v(_mm256_add_epi32(sz, _mm256_srai_epi32(_mm256_mullo_epi32(b->b[i], b->d2[i]), 15)));

    b->r1 = b->r0;
    b->r0 = r;
    b->p1 = b->p0;
    b->p0 = p;
    b->a1 = na1;
    b->a2 = na2;

    /* FILTEP, PREDIC */
    const v8 r2 = sat16v(_mm256_add_epi32(r, r));
    const v8 sp = sat16v(_mm256_add_epi32(_mm256_srai_epi32(_mm256_mullo_epi32(na1, r2), 15),
                                          _mm256_srai_epi32(_mm256_mullo_epi32(na2, b->r0x2), 15)));
    b->r0x2 = r2;
    b->sp = sp;
    b->sz = sz;
    b->s = sat16v(_mm256_add_epi32(sp, sz));
}

#define LANE_FIELD(bands, field)                                                                          \
    _mm256_setr_epi32(bands[0]->field, bands[1]->field, bands[2]->field, bands[3]->field, bands[4]->field, \
                      bands[5]->field, bands[6]->field, bands[7]->field)

LANES_FN static void band_gather(lane_band *t, sk_g722_band *const bands[SK_G722_LANES], v8 ring[8])
{
    t->s = LANE_FIELD(bands, s), t->sp = LANE_FIELD(bands, sp), t->sz = LANE_FIELD(bands, sz);
    t->r0 = LANE_FIELD(bands, r[0]), t->r1 = LANE_FIELD(bands, r[1]);
    t->p0 = LANE_FIELD(bands, p[0]), t->p1 = LANE_FIELD(bands, p[1]);
    t->a1 = LANE_FIELD(bands, a[0]), t->a2 = LANE_FIELD(bands, a[1]);
    t->nb = LANE_FIELD(bands, nb), t->det = LANE_FIELD(bands, det);
    t->r0x2 = sat16v(_mm256_add_epi32(t->r0, t->r0));
    for (int i = 0; i < 6; i++) {
        const v8 d = LANE_FIELD(bands, d[i]);
        ring[(7 - i) & 7] = d; /* d(n-1-i) was the difference of code -1-i */
        t->d2[i] = sat16v(_mm256_add_epi32(d, d));
        t->b[i] = LANE_FIELD(bands, b[i]);
    }
}

#define LANE_STORE(bands, field, v)                                       \
    do {                                                                  \
        int32_t lanes_[SK_G722_LANES];                                    \
        _mm256_storeu_si256((__m256i *)lanes_, v);                        \
        for (int l_ = 0; l_ < SK_G722_LANES; l_++)                        \
            bands[l_]->field = lanes_[l_];                                \
    } while (0)

/* n codes were coded: the last difference is that of code n-1, in ring[(n-1) & 7] */
LANES_FN static void band_scatter(sk_g722_band *const bands[SK_G722_LANES], const lane_band *t, const v8 ring[8], int n)
{
    LANE_STORE(bands, s, t->s);
    LANE_STORE(bands, sp, t->sp);
    LANE_STORE(bands, sz, t->sz);
    LANE_STORE(bands, r[0], t->r0);
    LANE_STORE(bands, r[1], t->r1);
    LANE_STORE(bands, p[0], t->p0);
    LANE_STORE(bands, p[1], t->p1);
    LANE_STORE(bands, a[0], t->a1);
    LANE_STORE(bands, a[1], t->a2);
    LANE_STORE(bands, nb, t->nb);
    LANE_STORE(bands, det, t->det);
    for (int i = 0; i < 6; i++) {
        LANE_STORE(bands, d[i], ring[(n - 1 - i) & 7]);
        LANE_STORE(bands, b[i], t->b[i]);
    }
}

/* The lower band's 6-bit quantiser: i = 30 - (how many thresholds (q6[j] * det) >> 12, j = 1..29, lie
 * above mag), as quant6_scalar of g722.c counts them. Two thresholds share a 32-bit lane: q6[1..15] in the
 * low 16-bit halves, q6[16..29] and a zero (never above) in the high ones, each times 16 so that one
 * unsigned high multiply gives (q6 * det) >> 12 (q6 * 16 <= 46704, det <= 32064). The thresholds
 * (<= 22850) and mag (<= 32767) compare as signed 16-bit values. */
#define Q6_PAIRS 15

V_FN void quant6_load(v8 pairs[Q6_PAIRS])
{
    for (int j = 0; j < Q6_PAIRS; j++) {
        const uint32_t high = j + 16 < 30 ? (uint32_t)q6[j + 16] << 4 : 0;
        pairs[j] = k8((int)((uint32_t)q6[j + 1] << 4 | high << 16));
    }
}

V_FN v8 quant6_v(v8 det, v8 mag, const v8 pairs[Q6_PAIRS])
{
    const v8 det2 = _mm256_or_si256(det, _mm256_slli_epi32(det, 16)); /* both non-negative, < 2^16 */
    const v8 mag2 = _mm256_or_si256(mag, _mm256_slli_epi32(mag, 16));
    v8 above[3] = {k8(0), k8(0), k8(0)}; /* minus the count, per half, in three independent sums */
#pragma GCC unroll 15
    for (int j = 0; j < Q6_PAIRS; j++)
        above[j % 3] = _mm256_add_epi16(above[j % 3], _mm256_cmpgt_epi16(_mm256_mulhi_epu16(det2, pairs[j]), mag2));
    const v8 halves = _mm256_add_epi16(_mm256_add_epi16(above[0], above[1]), above[2]); /* each >= -15 */
    return _mm256_add_epi32(k8(30), _mm256_madd_epi16(halves, _mm256_set1_epi16(1)));
}

/* The tables both coders look up per code, in registers: the 4-bit inverse quantiser and the lower band's
 * scale multipliers per truncated code, the antilog, and the higher band's inverse quantiser and
 * multipliers per code. */
typedef struct {
    v8 qm4[2], wl[2], ilb[4], qm2, wh;
} lane_tables;

V_FN void lane_tables_load(lane_tables *t)
{
    int wl4[16];
    for (int i = 0; i < 16; i++)
        wl4[i] = wl[rl42[i]];
    for (int h = 0; h < 2; h++) {
        t->qm4[h] = _mm256_loadu_si256((const __m256i *)(qm4 + 8 * h));
        t->wl[h] = _mm256_loadu_si256((const __m256i *)(wl4 + 8 * h));
    }
    for (int h = 0; h < 4; h++)
        t->ilb[h] = _mm256_loadu_si256((const __m256i *)(ilb + 8 * h));
    t->qm2 = _mm256_setr_epi32(qm2[0], qm2[1], qm2[2], qm2[3], 0, 0, 0, 0);
    t->wh = _mm256_setr_epi32(wh[rh2[0]], wh[rh2[1]], wh[rh2[2]], wh[rh2[3]], 0, 0, 0, 0);
}

#define LANES_BLOCK 64 /* codes per pass: the transposed inputs and outputs stay small */

V_FN void code_lanes(sk_g722_encoder *const e[SK_G722_LANES], const int32_t *const xl[SK_G722_LANES],
                     const int32_t *const xh[SK_G722_LANES], int n, unsigned char *const out[SK_G722_LANES])
{
    sk_g722_band *low[SK_G722_LANES], *high[SK_G722_LANES];
    for (int l = 0; l < SK_G722_LANES; l++) {
        low[l] = &e[l]->low;
        high[l] = &e[l]->high;
    }
    lane_band lo, hi;
    v8 lo_ring[8], hi_ring[8];
    band_gather(&lo, low, lo_ring);
    band_gather(&hi, high, hi_ring);

    v8 q6_pairs[Q6_PAIRS];
    quant6_load(q6_pairs);
    lane_tables t;
    lane_tables_load(&t);

    for (int k0 = 0; k0 < n; k0 += LANES_BLOCK) {
        const int m = n - k0 < LANES_BLOCK ? n - k0 : LANES_BLOCK;
        int32_t in_l[LANES_BLOCK][SK_G722_LANES] __attribute__((aligned(32)));
        int32_t in_h[LANES_BLOCK][SK_G722_LANES] __attribute__((aligned(32)));
        int32_t codes[LANES_BLOCK][SK_G722_LANES] __attribute__((aligned(32)));
        for (int l = 0; l < SK_G722_LANES; l++)
            for (int k = 0; k < m; k++) {
                in_l[k][l] = xl[l][k0 + k];
                in_h[k][l] = xh[l][k0 + k];
            }
        for (int k = 0; k < m; k++) {
            /* Lower band: quantise the prediction error with 6 bits */
            const v8 el = sat16v(_mm256_sub_epi32(_mm256_load_si256((const __m256i *)in_l[k]), lo.s));
            const v8 neg = _mm256_srai_epi32(el, 31);
            const v8 mag = _mm256_xor_si256(el, neg);
            const v8 i = quant6_v(lo.det, mag, q6_pairs);
            const v8 small = _mm256_cmpgt_epi32(k8(3), i);
            const v8 neg_base = _mm256_add_epi32(k8(-28), _mm256_and_si256(small, k8(30))); /* 34 or 64, less 62 */
            const v8 base = _mm256_add_epi32(k8(62), _mm256_and_si256(neg, neg_base));
            const v8 il = _mm256_sub_epi32(base, i);
            const v8 ril = _mm256_srai_epi32(il, 2);
            const v8 dl = det_mul15(lo.det, lut16(t.qm4, ril));
            adapt_scale_v(&lo, lut16(t.wl, ril), 18432, 8, t.ilb);
            predictor_update_v(&lo, dl);
            lo_ring[(k0 + k) & 7] = dl;

            /* Higher band: 2 bits */
            const v8 eh = sat16v(_mm256_sub_epi32(_mm256_load_si256((const __m256i *)in_h[k]), hi.s));
            const v8 hneg = _mm256_srai_epi32(eh, 31);
            const v8 hmag = _mm256_xor_si256(eh, hneg);
            const v8 level = _mm256_srai_epi32(_mm256_madd_epi16(hi.det, k8(564)), 12);
            const v8 small_h = _mm256_cmpgt_epi32(level, hmag);
            const v8 ih = _mm256_add_epi32(_mm256_andnot_si256(hneg, k8(2)), _mm256_and_si256(small_h, k8(1)));
            const v8 dh = det_mul15(hi.det, _mm256_permutevar8x32_epi32(t.qm2, ih));
            adapt_scale_v(&hi, _mm256_permutevar8x32_epi32(t.wh, ih), 22528, 10, t.ilb);
            predictor_update_v(&hi, dh);
            hi_ring[(k0 + k) & 7] = dh;
            _mm256_store_si256((__m256i *)codes[k], _mm256_or_si256(_mm256_slli_epi32(ih, 6), il));
        }
        for (int l = 0; l < SK_G722_LANES; l++)
            for (int k = 0; k < m; k++)
                out[l][k0 + k] = (unsigned char)codes[k][l];
    }
    band_scatter(low, &lo, lo_ring, n);
    band_scatter(high, &hi, hi_ring, n);
}

/* The decoder's serial loop (decode_bands of g722.c) for eight calls: no quantiser, the lower band's
 * output from the 6-bit inverse quantiser, and the receive QMF's inputs rl + rh and rl - rh per call. */
V_FN void decode_lanes(sk_g722_decoder *const d[SK_G722_LANES], const unsigned char *const in[SK_G722_LANES], int n,
                       int16_t *const ev[SK_G722_LANES], int16_t *const od[SK_G722_LANES])
{
    sk_g722_band *low[SK_G722_LANES], *high[SK_G722_LANES];
    for (int l = 0; l < SK_G722_LANES; l++) {
        low[l] = &d[l]->low;
        high[l] = &d[l]->high;
    }
    lane_band lo, hi;
    v8 lo_ring[8], hi_ring[8];
    band_gather(&lo, low, lo_ring);
    band_gather(&hi, high, hi_ring);

    lane_tables t;
    lane_tables_load(&t);

    for (int k0 = 0; k0 < n; k0 += LANES_BLOCK) {
        const int m = n - k0 < LANES_BLOCK ? n - k0 : LANES_BLOCK;
        int32_t codes[LANES_BLOCK][SK_G722_LANES] __attribute__((aligned(32)));
        int32_t sum[LANES_BLOCK][SK_G722_LANES] __attribute__((aligned(32)));
        int32_t dif[LANES_BLOCK][SK_G722_LANES] __attribute__((aligned(32)));
        for (int l = 0; l < SK_G722_LANES; l++)
            for (int k = 0; k < m; k++)
                codes[k][l] = in[l][k0 + k];
        for (int k = 0; k < m; k++) {
            const v8 code = _mm256_load_si256((const __m256i *)codes[k]);
            const v8 il = _mm256_and_si256(code, k8(0x3F)), ih = _mm256_srli_epi32(code, 6);

            /* Lower band */
            const v8 rl = clampv(_mm256_add_epi32(lo.s, det_mul15(lo.det, _mm256_i32gather_epi32(qm6, il, 4))),
                                 -16384, 16383);
            const v8 ril = _mm256_srai_epi32(il, 2);
            const v8 dl = det_mul15(lo.det, lut16(t.qm4, ril));
            adapt_scale_v(&lo, lut16(t.wl, ril), 18432, 8, t.ilb);
            predictor_update_v(&lo, dl);
            lo_ring[(k0 + k) & 7] = dl;

            /* Higher band */
            const v8 dh = det_mul15(hi.det, _mm256_permutevar8x32_epi32(t.qm2, ih));
            const v8 rh = clampv(_mm256_add_epi32(hi.s, dh), -16384, 16383);
            adapt_scale_v(&hi, _mm256_permutevar8x32_epi32(t.wh, ih), 22528, 10, t.ilb);
            predictor_update_v(&hi, dh);
            hi_ring[(k0 + k) & 7] = dh;
            _mm256_store_si256((__m256i *)sum[k], _mm256_add_epi32(rl, rh));
            _mm256_store_si256((__m256i *)dif[k], _mm256_sub_epi32(rl, rh));
        }
        for (int l = 0; l < SK_G722_LANES; l++)
            for (int k = 0; k < m; k++) {
                ev[l][k0 + k] = (int16_t)sum[k][l]; /* |rl +- rh| <= 32767 */
                od[l][k0 + k] = (int16_t)dif[k][l];
            }
    }
    band_scatter(low, &lo, lo_ring, n);
    band_scatter(high, &hi, hi_ring, n);
}

#define LANES_ARGS_CODE                                                                                  \
    sk_g722_encoder *const e[SK_G722_LANES], const int32_t *const xl[SK_G722_LANES],                     \
        const int32_t *const xh[SK_G722_LANES], int n, unsigned char *const out[SK_G722_LANES]
#define LANES_ARGS_DECODE                                                                                \
    sk_g722_decoder *const d[SK_G722_LANES], const unsigned char *const in[SK_G722_LANES], int n,        \
        int16_t *const ev[SK_G722_LANES], int16_t *const od[SK_G722_LANES]

LANES_FN static void code_lanes_avx2(LANES_ARGS_CODE)
{
    code_lanes(e, xl, xh, n, out);
}

LANES_FN static void decode_lanes_avx2(LANES_ARGS_DECODE)
{
    decode_lanes(d, in, n, ev, od);
}

/* At SIMD level 2 both bands of the eight calls share one register (g722_lanes_bw.c). */
void sk_g722_code_lanes(LANES_ARGS_CODE)
{
    (sk_simd_active() > 1 ? sk_g722_code_lanes_bw : code_lanes_avx2)(e, xl, xh, n, out);
}

void sk_g722_decode_lanes(LANES_ARGS_DECODE)
{
    (sk_simd_active() > 1 ? sk_g722_decode_lanes_bw : decode_lanes_avx2)(d, in, n, ev, od);
}
#endif
