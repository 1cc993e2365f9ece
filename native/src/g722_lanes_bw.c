/* The lanes of g722_lanes.c at SIMD level 2 (AVX-512 BW and VL): each call's two bands side by side in
 * the 16-bit lanes of one register, the lower band's states in lanes 0..7 and the higher band's in
 * 8..15 (call l in lanes l and 8 + l). Every state of the G.722 coder is a 16-bit value, so the
 * Recommendation's saturating additions are single instructions, and the steps both bands share (scale
 * factor adaptation, predictor update) run once for both. The codes and outputs are those of the
 * per-call coder (g722.c), to the bit.
 *
 * How the 16-bit forms keep g722.c's values:
 * - a product (a * b) >> 15 is 2 h + l, where h = (a * b) >> 16 (pmulhw) and l is the product's bit 15
 *   (pmullw >> 15): exact whenever the result fits 16 bits, true of every product here but FILTEZ's
 *   b(i) * d(n-i) at b = d2 = -32768 (32768). FILTEZ therefore adds h, then h + l, each saturating:
 *   two steps of the same sign, which saturate as one addition would;
 * - floor(-x / 2^k), the decay of the coefficients and the log scale factor, is one pmulhw by -2^(16-k):
 *   exact for every 16-bit x, where -x itself is not (b(i) reaches -32768);
 * - sat16(4 a1) is two saturating doublings, and UPPOL2 negates it with saturation: off by one from
 *   g722.c's sat16(-4 a1) only at -32767 for -32768, which the shift by 7 that follows maps alike;
 * - the 6-bit quantiser's thresholds (q6[j] * det) >> 12 are one unsigned high multiply of det (<= 32064)
 *   by 16 q6[j] (<= 46704), two thresholds per call: q6[1..15] beside the lower band's lanes, q6[16..29]
 *   beside the higher band's, where det and mag are the lower band's copied; the higher band's level
 *   (564 det) >> 12 likewise, by 9024;
 * - a lookup by code (inverse quantiser, scale multiplier) is one word permute of a 32-entry table: the
 *   lower band's entries from 0, the higher band's from 16;
 * - the rest as in g722_lanes.c.
 */
#include "sk_internal.h"

#include "g722_tables.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SK_NO_DISPATCH)
#include <stddef.h>

#include <immintrin.h>

typedef __m256i v16; /* both bands of eight calls */
typedef __m128i h8;  /* one band of eight calls */

#define BW_TARGET "avx2,avx512f,avx512vl,avx512bw"
#define BW_FN static inline __attribute__((always_inline, target(BW_TARGET)))
#define BW_ENTRY __attribute__((target(BW_TARGET)))

#define HALF SK_G722_LANES /* lanes per band */
typedef char sk_two_bands_fill_a_register[(HALF == 8) ? 1 : -1];

BW_FN v16 k16(int x)
{
    return _mm256_set1_epi16((short)x);
}

BW_FN h8 k8(int x)
{
    return _mm_set1_epi16((short)x);
}

/* the lower band's lanes x, the higher band's y */
BW_FN v16 per_band(int x, int y)
{
    return _mm256_setr_m128i(k8(x), k8(y));
}

BW_FN v16 clamp16(v16 x, v16 lo, v16 hi)
{
    return _mm256_max_epi16(_mm256_min_epi16(x, hi), lo);
}

/* (a * b) >> 15, where it fits 16 bits */
BW_FN v16 mul15(v16 a, v16 b)
{
    const v16 h = _mm256_mulhi_epi16(a, b), l = _mm256_srli_epi16(_mm256_mullo_epi16(a, b), 15);
    return _mm256_add_epi16(_mm256_add_epi16(h, h), l);
}

/* sat16(acc + ((a * b) >> 15)) for any 16-bit a and b */
BW_FN v16 add_mul15(v16 acc, v16 a, v16 b)
{
    const v16 h = _mm256_mulhi_epi16(a, b), l = _mm256_srli_epi16(_mm256_mullo_epi16(a, b), 15);
    return _mm256_adds_epi16(_mm256_adds_epi16(acc, h), _mm256_add_epi16(h, l));
}

/* x + floor(-x / 2^k): the Recommendation's x * (32768 - 2^(15-k)) >> 15 */
BW_FN v16 decay(v16 x, int k)
{
    return _mm256_add_epi16(x, _mm256_mulhi_epi16(x, k16(-(1 << (16 - k)))));
}

typedef struct {
    v16 s, sp, sz, r0, r1, p0, p1, a1, a2, nb, det;
    v16 r0x2;  /* sat16(2 * r0): FILTEP's second factor */
    v16 d2[6]; /* sat16(2 * d(n-1-i)) */
    v16 b[6];
} bands16;

/* The tables, by lane: word permutes of 32 entries (the lower band's from 0, the higher band's from 16),
 * the 6-bit inverse quantiser in four registers, the 6-bit quantiser's thresholds in pairs. */
#define Q6_PAIRS 15

typedef struct {
    v16 q[2];        /* feedback inverse quantiser: qm4 by code >> 2, then qm2 by code */
    v16 w[2];        /* scale factor multipliers: wl by code >> 2, then wh by code */
    v16 ilb[2];      /* antilog */
    v16 qm6[4];      /* the lower band's output inverse quantiser, by code */
    v16 q6[Q6_PAIRS];
    v16 nb_max, shift1;
} tables16;

BW_FN void tables16_load(tables16 *t)
{
    int16_t q[32] = {0}, w[32] = {0}, antilog[32], m6[64];
    for (int i = 0; i < 16; i++) {
        q[i] = (int16_t)qm4[i];
        w[i] = (int16_t)wl[rl42[i]];
    }
    for (int i = 0; i < 4; i++) {
        q[16 + i] = (int16_t)qm2[i];
        w[16 + i] = (int16_t)wh[rh2[i]];
    }
    for (int i = 0; i < 32; i++)
        antilog[i] = (int16_t)ilb[i];
    for (int i = 0; i < 64; i++)
        m6[i] = (int16_t)qm6[i];
    for (int h = 0; h < 2; h++) {
        t->q[h] = _mm256_loadu_si256((const __m256i *)(const void *)(q + 16 * h));
        t->w[h] = _mm256_loadu_si256((const __m256i *)(const void *)(w + 16 * h));
        t->ilb[h] = _mm256_loadu_si256((const __m256i *)(const void *)(antilog + 16 * h));
    }
    for (int h = 0; h < 4; h++)
        t->qm6[h] = _mm256_loadu_si256((const __m256i *)(const void *)(m6 + 16 * h));
    for (int j = 0; j < Q6_PAIRS; j++) {
        const int high = j + 16 < 30 ? q6[j + 16] * 16 : 0; /* a zero threshold is never above mag */
        t->q6[j] = _mm256_setr_m128i(k8(q6[j + 1] * 16), k8(high));
    }
    t->nb_max = per_band(18432, 22528);
    t->shift1 = per_band(9, 11);
}

/* The band states of eight calls: band[l] the lower band of call l, band[8 + l] its higher band. */
typedef struct {
    sk_g722_band *band[2 * HALF];
} band_set;

/* every stored value is a 16-bit one: see g722.c */
#define FIELD(set, at, l) (*(int32_t *)(void *)((char *)(set)->band[l] + (at)))

BW_FN v16 gather16(const band_set *set, size_t at)
{
    int16_t v[2 * HALF];
    for (int l = 0; l < 2 * HALF; l++)
        v[l] = (int16_t)FIELD(set, at, l);
    return _mm256_loadu_si256((const __m256i *)(const void *)v);
}

BW_FN void scatter16(const band_set *set, size_t at, v16 x)
{
    int16_t v[2 * HALF];
    _mm256_storeu_si256((__m256i *)(void *)v, x);
    for (int l = 0; l < 2 * HALF; l++)
        FIELD(set, at, l) = v[l];
}

#define AT(field) offsetof(sk_g722_band, field)

BW_FN void bands_gather(bands16 *t, const band_set *set, v16 ring[8])
{
    t->s = gather16(set, AT(s)), t->sp = gather16(set, AT(sp)), t->sz = gather16(set, AT(sz));
    t->r0 = gather16(set, AT(r[0])), t->r1 = gather16(set, AT(r[1]));
    t->p0 = gather16(set, AT(p[0])), t->p1 = gather16(set, AT(p[1]));
    t->a1 = gather16(set, AT(a[0])), t->a2 = gather16(set, AT(a[1]));
    t->nb = gather16(set, AT(nb)), t->det = gather16(set, AT(det));
    t->r0x2 = _mm256_adds_epi16(t->r0, t->r0);
    for (int i = 0; i < 6; i++) {
        const v16 d = gather16(set, AT(d[i]));
        ring[(7 - i) & 7] = d; /* d(n-1-i) was the difference of code -1-i */
        t->d2[i] = _mm256_adds_epi16(d, d);
        t->b[i] = gather16(set, AT(b[i]));
    }
}

/* n codes were coded: the last difference is that of code n-1, in ring[(n-1) & 7] */
BW_FN void bands_scatter(const band_set *set, const bands16 *t, const v16 ring[8], int n)
{
    scatter16(set, AT(s), t->s), scatter16(set, AT(sp), t->sp), scatter16(set, AT(sz), t->sz);
    scatter16(set, AT(r[0]), t->r0), scatter16(set, AT(r[1]), t->r1);
    scatter16(set, AT(p[0]), t->p0), scatter16(set, AT(p[1]), t->p1);
    scatter16(set, AT(a[0]), t->a1), scatter16(set, AT(a[1]), t->a2);
    scatter16(set, AT(nb), t->nb), scatter16(set, AT(det), t->det);
    for (int i = 0; i < 6; i++) {
        scatter16(set, AT(d[i]), ring[(n - 1 - i) & 7]);
        scatter16(set, AT(b[i]), t->b[i]);
    }
}

/* LOGSCL/SCALEL and LOGSCH/SCALEH: adapt_scale of g722.c, both bands */
BW_FN void adapt_scale16(bands16 *b, v16 multiplier, const tables16 *t)
{
    const v16 nb = clamp16(_mm256_add_epi16(decay(b->nb, 7), multiplier), _mm256_setzero_si256(), t->nb_max);
    b->nb = nb;
    const v16 shift = _mm256_sub_epi16(t->shift1, _mm256_srai_epi16(nb, 11));
    const v16 base = _mm256_permutex2var_epi16(t->ilb[0], _mm256_srai_epi16(nb, 6), t->ilb[1]); /* (nb >> 6) & 31 */
    b->det = _mm256_slli_epi16(_mm256_srlv_epi16(_mm256_slli_epi16(base, 1), shift), 2);
}

/* Block 4: predictor_update of g722.c, both bands */
BW_FN void predictor_update16(bands16 *b, v16 d)
{
    const v16 zero = _mm256_setzero_si256();
    const v16 r = _mm256_adds_epi16(b->s, d);
    const v16 p = _mm256_adds_epi16(b->sz, d);
    const v16 a1 = b->a1, a2 = b->a2;
    const v16 diff1 = _mm256_srai_epi16(_mm256_xor_si256(p, b->p0), 15);
    const v16 diff2 = _mm256_srai_epi16(_mm256_xor_si256(p, b->p1), 15);
    const v16 eq1 = _mm256_xor_si256(diff1, k16(-1));

    /* UPPOL2 */
    const v16 a1x2 = _mm256_adds_epi16(a1, a1);
    const v16 a1x4 = _mm256_adds_epi16(a1x2, a1x2);
    const v16 w2 = _mm256_subs_epi16(_mm256_xor_si256(a1x4, eq1), eq1);
    v16 na2 = _mm256_sub_epi16(k16(128), _mm256_and_si256(diff2, k16(256)));
    na2 = _mm256_add_epi16(_mm256_add_epi16(na2, _mm256_srai_epi16(w2, 7)), decay(a2, 7));
    na2 = clamp16(na2, k16(-12288), k16(12288));

    /* UPPOL1 */
    v16 na1 = _mm256_sub_epi16(k16(192), _mm256_and_si256(diff1, k16(384)));
    na1 = _mm256_add_epi16(na1, decay(a1, 8));
    const v16 lim = _mm256_sub_epi16(k16(15360), na2);
    na1 = _mm256_min_epi16(_mm256_max_epi16(na1, _mm256_sub_epi16(zero, lim)), lim);

    /* UPZERO with the old differences' signs, DELAYA, FILTEZ with the new ones */
    const v16 step = _mm256_andnot_si256(_mm256_cmpeq_epi16(d, zero), k16(128));
    for (int i = 0; i < 6; i++) {
        const v16 m = _mm256_srai_epi16(_mm256_xor_si256(b->d2[i], d), 15);
        b->b[i] = _mm256_add_epi16(_mm256_sub_epi16(_mm256_xor_si256(step, m), m), decay(b->b[i], 8));
    }
    for (int i = 5; i > 0; i--)
        b->d2[i] = b->d2[i - 1];
    b->d2[0] = _mm256_adds_epi16(d, d);
    v16 sz = zero;
    for (int i = 5; i >= 0; i--)
        sz = add_mul15(sz, b->b[i], b->d2[i]);

    b->r1 = b->r0;
    b->r0 = r;
    b->p1 = b->p0;
    b->p0 = p;
    b->a1 = na1;
    b->a2 = na2;

    /* FILTEP, PREDIC */
    const v16 r2 = _mm256_adds_epi16(r, r);
    const v16 sp = _mm256_adds_epi16(mul15(na1, r2), mul15(na2, b->r0x2));
    b->r0x2 = r2;
    b->sp = sp;
    b->sz = sz;
    b->s = _mm256_adds_epi16(sp, sz);
}

/* The lower band's 6-bit quantiser, as quant6_v of g722_lanes.c: i = 30 - (thresholds above mag) */
BW_FN h8 quant6_16(v16 det, v16 mag, const tables16 *t)
{
    const v16 det2 = _mm256_permute4x64_epi64(det, 0x44), mag2 = _mm256_permute4x64_epi64(mag, 0x44);
    v16 above[3] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
#pragma GCC unroll 15
    for (int j = 0; j < Q6_PAIRS; j++)
        above[j % 3] =
            _mm256_add_epi16(above[j % 3], _mm256_cmpgt_epi16(_mm256_mulhi_epu16(det2, t->q6[j]), mag2));
    const v16 sum = _mm256_add_epi16(_mm256_add_epi16(above[0], above[1]), above[2]);
    return _mm_add_epi16(k8(30), _mm_add_epi16(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1)));
}

/* the index of a lookup by code: the lower band's code >> 2, the higher band's code + 16 */
BW_FN v16 code_index(h8 il, h8 ih)
{
    return _mm256_setr_m128i(_mm_srli_epi16(il, 2), _mm_add_epi16(ih, k8(16)));
}

#define BLOCK 64 /* codes per pass: the transposed inputs and outputs stay small */

BW_ENTRY void sk_g722_code_lanes_bw(sk_g722_encoder *const e[SK_G722_LANES], const int32_t *const xl[SK_G722_LANES],
                                    const int32_t *const xh[SK_G722_LANES], int n,
                                    unsigned char *const out[SK_G722_LANES])
{
    band_set set;
    for (int l = 0; l < HALF; l++)
        set.band[l] = &e[l]->low, set.band[HALF + l] = &e[l]->high;
    bands16 st;
    v16 ring[8];
    bands_gather(&st, &set, ring);
    tables16 t;
    tables16_load(&t);

    for (int k0 = 0; k0 < n; k0 += BLOCK) {
        const int m = n - k0 < BLOCK ? n - k0 : BLOCK;
        int16_t in[BLOCK][2 * HALF] __attribute__((aligned(32)));
        int16_t codes[BLOCK][HALF] __attribute__((aligned(16)));
        for (int l = 0; l < HALF; l++)
            for (int k = 0; k < m; k++) {
                in[k][l] = (int16_t)xl[l][k0 + k]; /* the QMF's outputs: |x| <= 25928 */
                in[k][HALF + l] = (int16_t)xh[l][k0 + k];
            }
        for (int k = 0; k < m; k++) {
            const v16 err = _mm256_subs_epi16(_mm256_load_si256((const __m256i *)(const void *)in[k]), st.s);
            const v16 neg = _mm256_srai_epi16(err, 15);
            const v16 mag = _mm256_xor_si256(err, neg);

            /* Lower band: 6 bits, with the code assignment of g722_lanes.c */
            const h8 i = quant6_16(st.det, mag, &t);
            const h8 small = _mm_cmpgt_epi16(k8(3), i);
            const h8 neg_base = _mm_add_epi16(k8(-28), _mm_and_si128(small, k8(30))); /* 34 or 64, less 62 */
            const h8 il =
                _mm_sub_epi16(_mm_add_epi16(k8(62), _mm_and_si128(_mm256_castsi256_si128(neg), neg_base)), i);

            /* Higher band: 2 bits */
            const v16 level = _mm256_mulhi_epu16(st.det, k16(564 * 16));
            const v16 small_h = _mm256_cmpgt_epi16(level, mag);
            const h8 ih = _mm256_extracti128_si256(
                _mm256_add_epi16(_mm256_andnot_si256(neg, k16(2)), _mm256_and_si256(small_h, k16(1))), 1);
            _mm_store_si128((__m128i *)(void *)codes[k], _mm_or_si128(_mm_slli_epi16(ih, 6), il));

            const v16 idx = code_index(il, ih);
            const v16 d = mul15(st.det, _mm256_permutex2var_epi16(t.q[0], idx, t.q[1]));
            adapt_scale16(&st, _mm256_permutex2var_epi16(t.w[0], idx, t.w[1]), &t);
            predictor_update16(&st, d);
            ring[(k0 + k) & 7] = d;
        }
        for (int l = 0; l < HALF; l++)
            for (int k = 0; k < m; k++)
                out[l][k0 + k] = (unsigned char)codes[k][l];
    }
    bands_scatter(&set, &st, ring, n);
}

BW_ENTRY void sk_g722_decode_lanes_bw(sk_g722_decoder *const d[SK_G722_LANES],
                                      const unsigned char *const in[SK_G722_LANES], int n,
                                      int16_t *const ev[SK_G722_LANES], int16_t *const od[SK_G722_LANES])
{
    band_set set;
    for (int l = 0; l < HALF; l++)
        set.band[l] = &d[l]->low, set.band[HALF + l] = &d[l]->high;
    bands16 st;
    v16 ring[8];
    bands_gather(&st, &set, ring);
    tables16 t;
    tables16_load(&t);
    const v16 lo = k16(-16384), hi = k16(16383);

    for (int k0 = 0; k0 < n; k0 += BLOCK) {
        const int m = n - k0 < BLOCK ? n - k0 : BLOCK;
        unsigned char codes[BLOCK][HALF] __attribute__((aligned(8)));
        int16_t sum[BLOCK][HALF] __attribute__((aligned(16)));
        int16_t dif[BLOCK][HALF] __attribute__((aligned(16)));
        for (int l = 0; l < HALF; l++)
            for (int k = 0; k < m; k++)
                codes[k][l] = in[l][k0 + k];
        for (int k = 0; k < m; k++) {
            const h8 code = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)codes[k]));
            const h8 il = _mm_and_si128(code, k8(0x3F)), ih = _mm_srli_epi16(code, 6);
            const v16 idx = code_index(il, ih);
            const v16 dq = mul15(st.det, _mm256_permutex2var_epi16(t.q[0], idx, t.q[1]));

            /* The outputs: the lower band's from the 6-bit inverse quantiser, the higher band's from d */
            const v16 il16 = _mm256_setr_m128i(il, il); /* the higher lanes' lookups are replaced below */
            const v16 m6 = _mm256_mask_blend_epi16(_mm256_test_epi16_mask(il16, k16(32)),
                                                   _mm256_permutex2var_epi16(t.qm6[0], il16, t.qm6[1]),
                                                   _mm256_permutex2var_epi16(t.qm6[2], il16, t.qm6[3]));
            const v16 term = _mm256_blend_epi32(mul15(st.det, m6), dq, 0xF0);
            const v16 rec = clamp16(_mm256_adds_epi16(st.s, term), lo, hi);
            const h8 rl = _mm256_castsi256_si128(rec), rh = _mm256_extracti128_si256(rec, 1);
            _mm_store_si128((__m128i *)(void *)sum[k], _mm_add_epi16(rl, rh)); /* |rl +- rh| <= 32767 */
            _mm_store_si128((__m128i *)(void *)dif[k], _mm_sub_epi16(rl, rh));

            adapt_scale16(&st, _mm256_permutex2var_epi16(t.w[0], idx, t.w[1]), &t);
            predictor_update16(&st, dq);
            ring[(k0 + k) & 7] = dq;
        }
        for (int l = 0; l < HALF; l++)
            for (int k = 0; k < m; k++) {
                ev[l][k0 + k] = sum[k][l];
                od[l][k0 + k] = dif[k][l];
            }
    }
    bands_scatter(&set, &st, ring, n);
}
#endif
