/* ITU-T G.722 at 64 kbit/s: a QMF splits 16 kHz audio into two 8 kHz sub-bands; the lower band is
 * coded with 6-bit ADPCM, the higher with 2-bit ADPCM, both with the standard's adaptive pole/zero
 * predictor. Written from the algorithm description (blocks named as in the Recommendation); the
 * constants are the Recommendation's tables. PCM is 16-bit: the sub-band signals carry 15 bits.
 */
#include "sk_internal.h"

#if defined(__GNUC__)
#define SK_INLINE static inline __attribute__((always_inline))
#else
#define SK_INLINE static inline
#endif

#include "g722_tables.h"

static void band_init(sk_g722_band *b, int det)
{
    memset(b, 0, sizeof(*b));
    b->det = det;
}

/* The per-code work runs on a copy of each band's state in local variables (registers and stack,
 * no stores through the struct per code), branch-free: the signs that steer the adaptation are data,
 * and branches on them were mispredicted about half the time. Every simplification below keeps the
 * Recommendation's arithmetic exactly; the bounds that make a saturation a no-op are noted where one
 * was dropped (they hold from the all-zero initial state on). */
#if defined(__SSE2__)
#include <emmintrin.h>
#define SK_G722_SSE2 1
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SK_NO_DISPATCH)
#define SK_POPCNT 1 /* the encoder's SIMD instance is compiled with POPCNT, used when the CPU has it */
#endif
#endif

typedef struct {
    int s, sp, sz, r0, r1, p0, p1, a1, a2, nb, det;
    int r0x2; /* sat16(2 * r0), reused as sat16(2 * r1) by the next FILTEP */
    int d[6], b[6];
#ifdef SK_G722_SSE2
    __m128i vd, vb; /* SIMD path: d and b in 16-bit lanes 0..5 (both fit), lanes 6..7 zero */
#endif
} band_t;

SK_INLINE void band_load(band_t *t, const sk_g722_band *b, int vec)
{
    t->s = b->s, t->sp = b->sp, t->sz = b->sz;
    t->r0 = b->r[0], t->r1 = b->r[1], t->p0 = b->p[0], t->p1 = b->p[1];
    t->a1 = b->a[0], t->a2 = b->a[1], t->nb = b->nb, t->det = b->det;
    t->r0x2 = sat16(t->r0 * 2);
    for (int i = 0; i < 6; i++) {
        t->d[i] = b->d[i];
        t->b[i] = b->b[i];
    }
#ifdef SK_G722_SSE2
    if (vec) {
        t->vd = _mm_setr_epi16((int16_t)b->d[0], (int16_t)b->d[1], (int16_t)b->d[2], (int16_t)b->d[3],
                               (int16_t)b->d[4], (int16_t)b->d[5], 0, 0);
        t->vb = _mm_setr_epi16((int16_t)b->b[0], (int16_t)b->b[1], (int16_t)b->b[2], (int16_t)b->b[3],
                               (int16_t)b->b[4], (int16_t)b->b[5], 0, 0);
    }
#else
    (void)vec;
#endif
}

SK_INLINE void band_store(sk_g722_band *b, band_t *t, int vec)
{
#ifdef SK_G722_SSE2
    if (vec) {
        int16_t vd[8], vb[8];
        _mm_storeu_si128((__m128i *)vd, t->vd);
        _mm_storeu_si128((__m128i *)vb, t->vb);
        for (int i = 0; i < 6; i++) {
            t->d[i] = vd[i];
            t->b[i] = vb[i];
        }
    }
#else
    (void)vec;
#endif
    b->s = t->s, b->sp = t->sp, b->sz = t->sz;
    b->r[0] = t->r0, b->r[1] = t->r1, b->p[0] = t->p0, b->p[1] = t->p1;
    b->a[0] = t->a1, b->a[1] = t->a2, b->nb = t->nb, b->det = t->det;
    for (int i = 0; i < 6; i++) {
        b->d[i] = t->d[i];
        b->b[i] = t->b[i];
    }
}

/* LOGSCL/SCALEL (lower) and LOGSCH/SCALEH (higher): same shape, different constants. nb <= nb_max
 * keeps shift_base - (nb >> 11) >= -1, so a left shift by one and a right shift by (shift + 1) cover
 * both directions without a branch. */
SK_INLINE void adapt_scale(band_t *b, int multiplier, int nb_max, int shift_base)
{
    int nb = ((b->nb * 32512) >> 15) + multiplier;
    nb = clamp_int(nb, 0, nb_max);
    b->nb = nb;
    int shift = shift_base + 1 - (nb >> 11);
    b->det = ((ilb[(nb >> 6) & 31] << 1) >> shift) << 2;
}

#ifdef SK_G722_SSE2
/* UPZERO, DELAYA of d and FILTEZ on 16-bit lanes, with the same results:
 * - b * 32640 >> 15 from the 32-bit product's halves: (hi << 1) | (lo >> 15) are its bits 15..30, and the
 *   value lies in [-32640, 32639], so 16 bits hold it; adding +-128 stays in range (see below);
 * - sat16(2d) is a saturating add; the products b * sat16(2d) are formed exactly in 32 bits;
 * - the six terms are summed at once when none exceeds 5461 in magnitude (no partial sum can then
 *   saturate); otherwise they are summed one by one with saturation, in the scalar order. */
SK_INLINE int zero_section_sse2(band_t *b, int d)
{
    const __m128i keep = _mm_setr_epi16(-1, -1, -1, -1, -1, -1, 0, 0);
    const __m128i step = _mm_and_si128(_mm_set1_epi16((int16_t)(d == 0 ? 0 : 128)), keep);
    const __m128i m = _mm_srai_epi16(_mm_xor_si128(b->vd, _mm_set1_epi16((int16_t)d)), 15);
    const __m128i g = _mm_sub_epi16(_mm_xor_si128(step, m), m);
    const __m128i k = _mm_set1_epi16(32640);
    const __m128i hi = _mm_mulhi_epi16(b->vb, k), lo = _mm_mullo_epi16(b->vb, k);
    const __m128i nb = _mm_add_epi16(g, _mm_or_si128(_mm_slli_epi16(hi, 1), _mm_srli_epi16(lo, 15)));
    const __m128i nd = _mm_and_si128(_mm_insert_epi16(_mm_slli_si128(b->vd, 2), d, 0), keep);
    b->vb = nb;
    b->vd = nd;
    const __m128i d2 = _mm_adds_epi16(nd, nd);
    const __m128i plo = _mm_mullo_epi16(nb, d2), phi = _mm_mulhi_epi16(nb, d2);
    const __m128i t0 = _mm_srai_epi32(_mm_unpacklo_epi16(plo, phi), 15); /* terms 0..3 */
    const __m128i t1 = _mm_srai_epi32(_mm_unpackhi_epi16(plo, phi), 15); /* terms 4, 5 (6, 7: zero) */
    const __m128i lim = _mm_set1_epi32(5461), nlim = _mm_set1_epi32(-5461);
    const __m128i big = _mm_or_si128(_mm_or_si128(_mm_cmpgt_epi32(t0, lim), _mm_cmpgt_epi32(nlim, t0)),
                                     _mm_or_si128(_mm_cmpgt_epi32(t1, lim), _mm_cmpgt_epi32(nlim, t1)));
    if (__builtin_expect(_mm_movemask_epi8(big) == 0, 1)) {
        __m128i sum = _mm_add_epi32(t0, t1);
        sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4E));
        sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xB1));
        return _mm_cvtsi128_si32(sum);
    }
    int32_t t[8];
    _mm_storeu_si128((__m128i *)t, t0);
    _mm_storeu_si128((__m128i *)(t + 4), t1);
    int sz = 0;
    for (int i = 5; i >= 0; i--)
        sz = sat16(sz + t[i]);
    return sz;
}
#endif

/* Block 4: reconstruction, pole/zero predictor adaptation and the next prediction. */
SK_INLINE void predictor_update(band_t *b, int d, int vec)
{
    int r = sat16(b->s + d);  /* RECONS */
    int p = sat16(b->sz + d); /* PARREC */
    const int a1 = b->a1, a2 = b->a2;
    /* all ones where the sign of p differs from that of p(n-1), p(n-2) (sign: v < 0) */
    const int diff1 = (p ^ b->p0) >> 31, diff2 = (p ^ b->p1) >> 31;

    /* UPPOL2: w2 = min(-sat16(4 a1), 32767) when the signs agree, else sat16(4 a1). One clamp of +-4 a1
     * gives the same w2 >> 7: they differ only where -sat16(4 a1) = -32767 meets a clamp to -32768, and
     * both shift to -256. */
    const int eq1 = ~diff1;
    const int w2 = sat16(((a1 * 4) ^ eq1) - eq1);
    int na2 = 128 - (diff2 & 256) + (w2 >> 7) + ((a2 * 32512) >> 15);
    na2 = clamp_int(na2, -12288, 12288);

    /* UPPOL1: |a1| <= 27648 (the limit below), so +-192 + (a1 * 32640 >> 15) needs no saturation, nor
     * does 15360 - a2 (|a2| <= 12288). */
    int na1 = 192 - (diff1 & 384) + ((a1 * 32640) >> 15);
    const int lim = 15360 - na2;
    na1 = clamp_int(na1, -lim, lim);

    int sz;
#ifdef SK_G722_SSE2
    if (vec)
        sz = zero_section_sse2(b, d);
    else
#else
    (void)vec;
#endif
    {
        /* UPZERO: sign-sign update; (b * 32640 >> 15) lies in [-32640, 32639], so +-128 stays in 16 bits */
        const int step = d == 0 ? 0 : 128;
        for (int i = 0; i < 6; i++) {
            const int m = (b->d[i] ^ d) >> 31; /* signs differ: -step */
            b->b[i] = ((step ^ m) - m) + ((b->b[i] * 32640) >> 15);
        }
        /* DELAYA */
        for (int i = 5; i > 0; i--)
            b->d[i] = b->d[i - 1];
        b->d[0] = d;
        /* FILTEZ (saturating after every term, in this order) */
        sz = 0;
        for (int i = 5; i >= 0; i--)
            sz = sat16(sz + ((b->b[i] * sat16(b->d[i] * 2)) >> 15));
    }
    b->r1 = b->r0;
    b->r0 = r;
    b->p1 = b->p0;
    b->p0 = p;
    b->a1 = na1;
    b->a2 = na2;

    /* FILTEP */
    const int r2 = sat16(r * 2);
    int sp = sat16(((na1 * r2) >> 15) + ((na2 * b->r0x2) >> 15));
    b->r0x2 = r2;
    b->sp = sp;
    b->sz = sz;
    b->s = sat16(sp + sz); /* PREDIC */
}

void sk_g722_encoder_init(sk_g722_encoder *e)
{
    memset(e, 0, sizeof(*e));
    band_init(&e->low, 32);
    band_init(&e->high, 8);
}

void sk_g722_decoder_init(sk_g722_decoder *d)
{
    memset(d, 0, sizeof(*d));
    band_init(&d->low, 32);
    band_init(&d->high, 8);
}

/* The QMFs over a block: the 24-tap window of pair k holds pairs k-11..k, even samples in ev[k..k+11]
 * and odd ones in od[k..k+11] (11 pairs of history first). Integer sums, exact in any order, so the
 * loop runs across outputs and vectorises; the serial ADPCM loop only sees xl/xh or rl +- rh. */
#define QMF_HIST SK_G722_QMF_HIST
#define QMF_BLOCK SK_G722_QMF_BLOCK

SK_INLINE void qmf_load(const int32_t x[24], int16_t *ev, int16_t *od)
{
    for (int i = 0; i < QMF_HIST; i++) { /* the newest 11 pairs: x[2..23] */
        ev[i] = (int16_t)x[2 + 2 * i];
        od[i] = (int16_t)x[3 + 2 * i];
    }
}

SK_INLINE void qmf_keep(int32_t x[24], const int16_t *ev, const int16_t *od, int n)
{
    for (int i = 0; i < 12; i++) { /* window of the last pair: ev[n-1 .. n+10] */
        x[2 * i] = ev[n - 1 + i];
        x[2 * i + 1] = od[n - 1 + i];
    }
}

/* Transmit QMF: xl = (odd + even) >> 14, xh = (odd - even) >> 14. */
static void qmf_analysis_scalar(const int16_t *restrict ev, const int16_t *restrict od, int n,
                                int32_t *restrict xl, int32_t *restrict xh)
{
    for (int k = 0; k < n; k++) {
        int32_t even = 0, odd = 0;
        for (int i = 0; i < 12; i++) {
            even += ev[k + i] * qmf_h[i];
            odd += od[k + i] * qmf_h[11 - i];
        }
        xl[k] = (odd + even) >> 14;
        xh[k] = (odd - even) >> 14;
    }
}

/* Receive QMF: sample 2k from the odd taps, 2k + 1 from the even ones. */
static void qmf_synthesis_scalar(const int16_t *restrict ev, const int16_t *restrict od, int n,
                                 int16_t *restrict out)
{
    for (int k = 0; k < n; k++) {
        int32_t o2 = 0, o1 = 0;
        for (int i = 0; i < 12; i++) {
            o2 += ev[k + i] * qmf_h[i];
            o1 += od[k + i] * qmf_h[11 - i];
        }
        out[2 * k] = (int16_t)sat16(o1 >> 11);
        out[2 * k + 1] = (int16_t)sat16(o2 >> 11);
    }
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SK_NO_DISPATCH)
#include <immintrin.h>
#define QMF_AVX2 1
#define QMF_FN static inline __attribute__((always_inline, target("avx2")))

/* The QMFs on AVX2, 16 windows a pass: pmaddwd multiplies the samples x[2j + 2p], x[2j + 2p + 1] of 32-bit
 * lane j by two taps and adds them, so six of them sum the windows k = 2j (from x) or 2j + 1 (from
 * x + 1): the same integer sums as the scalar loops, in another order. */
QMF_FN void qmf_taps(__m256i pairs[6], int reversed)
{
    for (int p = 0; p < 6; p++) {
        const int a = qmf_h[reversed ? 11 - 2 * p : 2 * p], b = qmf_h[reversed ? 10 - 2 * p : 2 * p + 1];
        pairs[p] = _mm256_set1_epi32((int)((uint32_t)(uint16_t)a | (uint32_t)b << 16));
    }
}

/* lane j: the window sum sum_i x[2j + i] * tap[i] */
QMF_FN __m256i qmf_sums(const int16_t *x, const __m256i pairs[6])
{
    __m256i acc = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(const void *)x), pairs[0]);
    for (int p = 1; p < 6; p++)
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(const void *)(x + 2 * p)),
                                                      pairs[p]));
    return acc;
}

/* windows k (lane j: k = 2j) and k + 1 (k = 2j + 1) back in order: 16 values from two halves */
QMF_FN void qmf_store_in_order(int32_t *out, __m256i at_even, __m256i at_odd)
{
    const __m256i lo = _mm256_unpacklo_epi32(at_even, at_odd), hi = _mm256_unpackhi_epi32(at_even, at_odd);
    _mm256_storeu_si256((__m256i *)(void *)out, _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_storeu_si256((__m256i *)(void *)(out + 8), _mm256_permute2x128_si256(lo, hi, 0x31));
}

__attribute__((target("avx2"))) static void qmf_analysis_avx2(const int16_t *restrict ev, const int16_t *restrict od,
                                                              int n, int32_t *restrict xl, int32_t *restrict xh)
{
    __m256i h[6], r[6];
    qmf_taps(h, 0);
    qmf_taps(r, 1);
    int k = 0;
    for (; k + 16 <= n; k += 16) { /* reads ev, od up to [k + 26] <= [n + 10]: the block's last window */
        const __m256i e0 = qmf_sums(ev + k, h), e1 = qmf_sums(ev + k + 1, h);
        const __m256i o0 = qmf_sums(od + k, r), o1 = qmf_sums(od + k + 1, r);
        qmf_store_in_order(xl + k, _mm256_srai_epi32(_mm256_add_epi32(o0, e0), 14),
                           _mm256_srai_epi32(_mm256_add_epi32(o1, e1), 14));
        qmf_store_in_order(xh + k, _mm256_srai_epi32(_mm256_sub_epi32(o0, e0), 14),
                           _mm256_srai_epi32(_mm256_sub_epi32(o1, e1), 14));
    }
    qmf_analysis_scalar(ev + k, od + k, n - k, xl + k, xh + k);
}

__attribute__((target("avx2"))) static void qmf_synthesis_avx2(const int16_t *restrict ev, const int16_t *restrict od,
                                                               int n, int16_t *restrict out)
{
    __m256i h[6], r[6];
    qmf_taps(h, 0);
    qmf_taps(r, 1);
    int k = 0;
    for (; k + 16 <= n; k += 16) {
        /* sat16(sum >> 11) of the odd taps' windows (samples 2k) and the even taps' (2k + 1), k even and odd */
        const __m256i a = _mm256_srai_epi32(qmf_sums(od + k, r), 11), b = _mm256_srai_epi32(qmf_sums(ev + k, h), 11);
        const __m256i c = _mm256_srai_epi32(qmf_sums(od + k + 1, r), 11);
        const __m256i d = _mm256_srai_epi32(qmf_sums(ev + k + 1, h), 11);
        /* per 128-bit lane, four windows each: a0 b0 c0 d0 a1 b1 c1 d1 ... is the output order */
        const __m256i ac = _mm256_packs_epi32(a, c), bd = _mm256_packs_epi32(b, d);
        const __m256i ab = _mm256_unpacklo_epi16(ac, bd), cd = _mm256_unpackhi_epi16(ac, bd);
        const __m256i w0 = _mm256_unpacklo_epi32(ab, cd), w1 = _mm256_unpackhi_epi32(ab, cd);
        _mm256_storeu_si256((__m256i *)(void *)(out + 2 * k), _mm256_permute2x128_si256(w0, w1, 0x20));
        _mm256_storeu_si256((__m256i *)(void *)(out + 2 * k + 16), _mm256_permute2x128_si256(w0, w1, 0x31));
    }
    qmf_synthesis_scalar(ev + k, od + k, n - k, out + 2 * k);
}
#endif

static void qmf_analysis(const int16_t *ev, const int16_t *od, int n, int32_t *xl, int32_t *xh)
{
#ifdef QMF_AVX2
    if (sk_simd_active() > 0) {
        qmf_analysis_avx2(ev, od, n, xl, xh);
        return;
    }
#endif
    qmf_analysis_scalar(ev, od, n, xl, xh);
}

static void qmf_synthesis(const int16_t *ev, const int16_t *od, int n, int16_t *out)
{
#ifdef QMF_AVX2
    if (sk_simd_active() > 0) {
        qmf_synthesis_avx2(ev, od, n, out);
        return;
    }
#endif
    qmf_synthesis_scalar(ev, od, n, out);
}

/* Lower band 6-bit quantiser: the smallest i in 1..29 with mag < (q6[i] * det) >> 12, else 30. The
 * thresholds grow with i, so i = 1 + (how many of them mag reaches): a count instead of a search. */
SK_INLINE int quant6_scalar(int mag, int det)
{
    int count = 0;
    for (int j = 1; j < 30; j++)
        count += mag >= ((q6[j] * det) >> 12);
    return 1 + count;
}

#if defined(SK_G722_SSE2)
/* The same count on 16-bit lanes: thresholds (q6 * det) >> 12 <= 2919 * 32064 >> 12 = 22850 and mag <=
 * 32767 fit; the 32-bit product's bits 12..27 come from the high and low 16-bit halves. Lanes 30..31 hold
 * 32767 as (threshold - 1), which no mag exceeds. */
static const int16_t q6_lanes[32] = {35,   72,   110,  150,  190,  233,  276,  323,  370,  422,  473,
                                     530,  587,  650,  714,  786,  858,  940,  1023, 1121, 1219, 1339,
                                     1458, 1612, 1765, 1980, 2195, 2557, 2919, 0,    0,    0};

typedef struct {
    __m128i t[4]; /* (q6[1..29] * det >> 12) - 1 */
} quant6_t;

SK_INLINE void quant6_prepare(quant6_t *q, int det)
{
    const __m128i dv = _mm_set1_epi16((int16_t)det), one = _mm_set1_epi16(1);
    for (int v = 0; v < 4; v++) {
        const __m128i c = _mm_loadu_si128((const __m128i *)(q6_lanes + 8 * v));
        const __m128i hi = _mm_mulhi_epi16(c, dv), lo = _mm_mullo_epi16(c, dv);
        __m128i t = _mm_or_si128(_mm_slli_epi16(hi, 4), _mm_srli_epi16(lo, 12));
        t = _mm_sub_epi16(t, one);
        if (v == 3) /* lanes 29..31 (i = 30..32) never count */
            t = _mm_max_epi16(t, _mm_setr_epi16(-32768, -32768, -32768, -32768, -32768, 32767, 32767, 32767));
        q->t[v] = t;
    }
}

SK_INLINE int quant6_sse2(const quant6_t *q, int mag)
{
#ifdef SK_POPCNT
    {   /* shorter dependency chain: the 32 compare lanes as a bit mask, counted */
        const __m128i m = _mm_set1_epi16((int16_t)mag);
        const __m128i c01 = _mm_packs_epi16(_mm_cmpgt_epi16(m, q->t[0]), _mm_cmpgt_epi16(m, q->t[1]));
        const __m128i c23 = _mm_packs_epi16(_mm_cmpgt_epi16(m, q->t[2]), _mm_cmpgt_epi16(m, q->t[3]));
        const unsigned bits = (unsigned)_mm_movemask_epi8(c01) | ((unsigned)_mm_movemask_epi8(c23) << 16);
        return 1 + __builtin_popcount(bits);
    }
#endif
    const __m128i m = _mm_set1_epi16((int16_t)mag);
    __m128i c = _mm_add_epi16(_mm_add_epi16(_mm_cmpgt_epi16(m, q->t[0]), _mm_cmpgt_epi16(m, q->t[1])),
                              _mm_add_epi16(_mm_cmpgt_epi16(m, q->t[2]), _mm_cmpgt_epi16(m, q->t[3])));
    c = _mm_madd_epi16(c, _mm_set1_epi16(1)); /* four 32-bit partial counts, negated */
    c = _mm_add_epi32(c, _mm_shuffle_epi32(c, 0x4E));
    c = _mm_add_epi32(c, _mm_shuffle_epi32(c, 0xB1));
    return 1 - _mm_cvtsi128_si32(c);
}
#endif

/* code_neg / code_pos side by side: index i + 32 when the error is negative */
static const unsigned char code6[64] = {
    0,  61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39, 38, 37, 36,
    35, 34, 33, 32, 0,  0,  63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13,
    12, 11, 10, 9,  8,  7,  6,  5,  4,  0};

/* The encoder's SIMD instance: counted with POPCNT where the compiler is told it may use it. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SK_NO_DISPATCH)
#define SK_ENC_TARGET __attribute__((target("popcnt")))
#else
#define SK_ENC_TARGET
#endif

/* The SIMD instances run only at SIMD level >= 1 (AVX2 present): on x86 with GCC or clang they are
 * compiled for it (three-operand VEX forms of the same SSE2 operations: identical results). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SK_NO_DISPATCH)
#define SK_VEC_TARGET __attribute__((target("avx2")))
#else
#define SK_VEC_TARGET
#endif

/* Serial ADPCM over n pairs of sub-band samples -> n codes. vec: the SSE2 quantiser (else the scalar count). */
SK_INLINE void encode_bands(sk_g722_encoder *e, const int32_t *xl, const int32_t *xh, int n,
                                   unsigned char *out, int vec)
{
    band_t lo, hi;
    band_load(&lo, &e->low, vec);
    band_load(&hi, &e->high, vec);
#ifdef SK_G722_SSE2
    quant6_t q;
    if (vec)
        quant6_prepare(&q, lo.det);
#else
    (void)vec;
#endif
    for (int k = 0; k < n; k++) {
        /* Lower band: quantise the prediction error with 6 bits */
        const int el = sat16(xl[k] - lo.s);
        const int neg = el >> 31;
        const int mag = el ^ neg; /* el >= 0 ? el : -(el + 1) */
        int i;
#ifdef SK_G722_SSE2
        if (vec)
            i = quant6_sse2(&q, mag);
        else
#endif
            i = quant6_scalar(mag, lo.det);
        const int il = code6[i + (neg & 32)];
        const int ril = il >> 2;
        const int dl = (lo.det * qm4[ril]) >> 15;
        adapt_scale(&lo, wl[rl42[ril]], 18432, 8);
#ifdef SK_G722_SSE2
        if (vec)
            quant6_prepare(&q, lo.det);
#endif
        predictor_update(&lo, dl, vec);

        /* Higher band: 2 bits */
        const int eh = sat16(xh[k] - hi.s);
        const int hneg = eh >> 31;
        const int hmag = eh ^ hneg;
        const int big = hmag >= ((564 * hi.det) >> 12);
        const int ih = (hneg ? 0 : 2) + (big ? 0 : 1);
        const int dh = (hi.det * qm2[ih]) >> 15;
        adapt_scale(&hi, wh[rh2[ih]], 22528, 10);
        predictor_update(&hi, dh, vec);
        out[k] = (unsigned char)((ih << 6) | il);
    }
    band_store(&e->low, &lo, vec);
    band_store(&e->high, &hi, vec);
}

static void encode_bands_scalar(sk_g722_encoder *e, const int32_t *xl, const int32_t *xh, int n, unsigned char *out)
{
    encode_bands(e, xl, xh, n, out, 0);
}

SK_ENC_TARGET static void encode_bands_vec(sk_g722_encoder *e, const int32_t *xl, const int32_t *xh, int n, unsigned char *out)
{
    encode_bands(e, xl, xh, n, out, 1);
}

/* The encoder's per-call ADPCM at the SIMD level in use. */
static int encode_vec(void)
{
#ifdef SK_POPCNT
    static int popcnt = -1;
    if (popcnt < 0) {
        __builtin_cpu_init();
        popcnt = __builtin_cpu_supports("popcnt") ? 1 : 0;
    }
    return sk_simd_active() > 0 && popcnt;
#else
    return sk_simd_active() > 0;
#endif
}

void sk_g722_analyse(sk_g722_encoder *e, const int16_t *pcm, int npairs, int32_t *xl, int32_t *xh)
{
    int16_t ev[QMF_HIST + QMF_BLOCK], od[QMF_HIST + QMF_BLOCK];
    while (npairs > 0) {
        const int n = npairs < QMF_BLOCK ? npairs : QMF_BLOCK;
        qmf_load(e->x, ev, od);
        for (int k = 0; k < n; k++) {
            ev[QMF_HIST + k] = pcm[2 * k];
            od[QMF_HIST + k] = pcm[2 * k + 1];
        }
        qmf_analysis(ev, od, n, xl, xh);
        qmf_keep(e->x, ev, od, n);
        pcm += 2 * n;
        xl += n;
        xh += n;
        npairs -= n;
    }
}

void sk_g722_code(sk_g722_encoder *e, const int32_t *xl, const int32_t *xh, int n, unsigned char *out)
{
    if (encode_vec())
        encode_bands_vec(e, xl, xh, n, out);
    else
        encode_bands_scalar(e, xl, xh, n, out);
}

void sk_g722_encode_block(sk_g722_encoder *e, const int16_t *pcm, int npairs, unsigned char *out)
{
    int32_t xl[QMF_BLOCK], xh[QMF_BLOCK];
    while (npairs > 0) {
        const int n = npairs < QMF_BLOCK ? npairs : QMF_BLOCK;
        sk_g722_analyse(e, pcm, n, xl, xh);
        sk_g722_code(e, xl, xh, n, out);
        pcm += 2 * n;
        out += n;
        npairs -= n;
    }
}

/* Serial ADPCM over n codes -> rl + rh and rl - rh (the receive QMF's even and odd inputs). */
SK_INLINE void decode_bands(sk_g722_decoder *dec, const unsigned char *in, int n, int16_t *ev, int16_t *od, int vec)
{
    band_t lo, hi;
    band_load(&lo, &dec->low, vec);
    band_load(&hi, &dec->high, vec);
    for (int k = 0; k < n; k++) {
        const int il = in[k] & 0x3F, ih = in[k] >> 6;
        const int rl = clamp_int(lo.s + ((lo.det * qm6[il]) >> 15), -16384, 16383);
        const int ril = il >> 2;
        const int dl = (lo.det * qm4[ril]) >> 15;
        adapt_scale(&lo, wl[rl42[ril]], 18432, 8);
        predictor_update(&lo, dl, vec);

        const int dh = (hi.det * qm2[ih]) >> 15;
        const int rh = clamp_int(hi.s + dh, -16384, 16383);
        adapt_scale(&hi, wh[rh2[ih]], 22528, 10);
        predictor_update(&hi, dh, vec);
        ev[k] = (int16_t)(rl + rh); /* |rl +- rh| <= 32767 */
        od[k] = (int16_t)(rl - rh);
    }
    band_store(&dec->low, &lo, vec);
    band_store(&dec->high, &hi, vec);
}

static void decode_bands_scalar(sk_g722_decoder *dec, const unsigned char *in, int n, int16_t *ev, int16_t *od)
{
    decode_bands(dec, in, n, ev, od, 0);
}

SK_VEC_TARGET static void decode_bands_vec(sk_g722_decoder *dec, const unsigned char *in, int n, int16_t *ev, int16_t *od)
{
    decode_bands(dec, in, n, ev, od, 1);
}

void sk_g722_decode_bands(sk_g722_decoder *dec, const unsigned char *in, int n, int16_t *ev, int16_t *od)
{
    if (sk_simd_active() > 0)
        decode_bands_vec(dec, in, n, ev, od);
    else
        decode_bands_scalar(dec, in, n, ev, od);
}

void sk_g722_synthesise(sk_g722_decoder *dec, int16_t *ev, int16_t *od, int n, int16_t *pcm)
{
    qmf_load(dec->x, ev, od);
    qmf_synthesis(ev, od, n, pcm);
    qmf_keep(dec->x, ev, od, n);
}

void sk_g722_decode_block(sk_g722_decoder *dec, const unsigned char *in, int n_codes, int16_t *pcm)
{
    int16_t ev[QMF_HIST + QMF_BLOCK], od[QMF_HIST + QMF_BLOCK];
    while (n_codes > 0) {
        const int n = n_codes < QMF_BLOCK ? n_codes : QMF_BLOCK;
        sk_g722_decode_bands(dec, in, n, ev + QMF_HIST, od + QMF_HIST);
        sk_g722_synthesise(dec, ev, od, n, pcm);
        in += n;
        pcm += 2 * n;
        n_codes -= n;
    }
}

size_t sk_g722_encode(sk_g722_encoder *e, const unsigned char *pcm, size_t nbytes, unsigned char *out)
{
    int16_t buf[2 * QMF_BLOCK];
    size_t written = 0;
    int have = 0; /* samples in buf */
    if (e->have_held)
        buf[have++] = e->held;
    e->have_held = 0;
    while (nbytes > 0) {
        if (e->odd) { /* finish a sample split across calls */
            unsigned char pair[2] = {e->odd_byte, pcm[0]};
            buf[have++] = (int16_t)load_s16(pair);
            e->odd = 0;
            pcm++;
            nbytes--;
        } else if (nbytes >= 2) {
            buf[have++] = (int16_t)load_s16(pcm);
            pcm += 2;
            nbytes -= 2;
        } else {
            e->odd = 1;
            e->odd_byte = pcm[0];
            break;
        }
        if (have == 2 * QMF_BLOCK) {
            sk_g722_encode_block(e, buf, QMF_BLOCK, out + written);
            written += QMF_BLOCK;
            have = 0;
        }
    }
    if (have >= 2) {
        sk_g722_encode_block(e, buf, have / 2, out + written);
        written += (size_t)(have / 2);
    }
    if (have & 1) {
        e->held = buf[have - 1];
        e->have_held = 1;
    }
    return written;
}

size_t sk_g722_decode(sk_g722_decoder *d, const unsigned char *in, size_t n, unsigned char *pcm)
{
    int16_t buf[2 * QMF_BLOCK];
    size_t done = 0;
    while (done < n) {
        const int c = n - done < QMF_BLOCK ? (int)(n - done) : QMF_BLOCK;
        sk_g722_decode_block(d, in + done, c, buf);
        store_pcm(pcm + 4 * done, buf, 2 * (size_t)c);
        done += (size_t)c;
    }
    return 4 * n;
}
