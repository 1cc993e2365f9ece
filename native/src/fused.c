/* Fused per-frame paths: payload <-> 24 kHz PCM16 in one call. Decoded samples go straight into the
 * resampler's float staging area, and resampled samples straight into the encoder: no extra passes. */
#include "sk_internal.h"

int sk_dec24k_init(sk_dec24k *d, int codec)
{
    memset(d, 0, sizeof(*d));
    d->codec = codec;
    if (codec == SK_CODEC_PCMU || codec == SK_CODEC_PCMA)
        return sk_resampler_init(&d->rs, 8000, 24000);
    if (codec == SK_CODEC_G722) {
        sk_g722_decoder_init(&d->g722);
        return sk_resampler_init(&d->rs, 16000, 24000);
    }
    return -1;
}

int sk_enc24k_init(sk_enc24k *e, int codec)
{
    memset(e, 0, sizeof(*e));
    e->codec = codec;
    if (codec == SK_CODEC_PCMU || codec == SK_CODEC_PCMA)
        return sk_resampler_init(&e->rs, 24000, 8000);
    if (codec == SK_CODEC_G722) {
        sk_g722_encoder_init(&e->g722);
        return sk_resampler_init(&e->rs, 24000, 16000);
    }
    return -1;
}

size_t sk_dec24k_run(sk_dec24k *d, const unsigned char *payload, size_t n, unsigned char *out)
{
    int16_t res[3 * SK_RS_CHUNK + 4];
    float *stage = sk_rs_stage(&d->rs);
    const int g722 = d->codec == SK_CODEC_G722;
    const size_t per = g722 ? SK_RS_CHUNK / 2 : SK_RS_CHUNK; /* payload bytes per staged chunk */
    size_t written = 0;
    while (n > 0) {
        int c = n < per ? (int)n : (int)per;
        if (g722) {
            int16_t *pcm16 = res; /* 2c <= SK_RS_CHUNK samples, free until the commit below */
            sk_g722_decode_block(&d->g722, payload, c, pcm16);
            for (int i = 0; i < 2 * c; i++)
                stage[i] = (float)pcm16[i];
        } else {
            sk_g711_floats(payload, c, stage, d->codec == SK_CODEC_PCMA);
        }
        size_t k;
#ifdef SK_LITTLE_ENDIAN
        if (((uintptr_t)out & 1) == 0) /* straight into place: no copy through res */
            k = sk_rs_commit(&d->rs, g722 ? 2 * c : c, (int16_t *)(void *)(out + 2 * written));
        else
#endif
        {
            k = sk_rs_commit(&d->rs, g722 ? 2 * c : c, res);
            store_pcm(out + 2 * written, res, k);
        }
        written += k;
        payload += c;
        n -= (size_t)c;
    }
    return 2 * written;
}

size_t sk_enc24k_run(sk_enc24k *e, const unsigned char *pcm, size_t nbytes, unsigned char *out)
{
    int16_t res[SK_RS_CHUNK];
    size_t written = 0;
    sk_resampler *rs = &e->rs;
    float *stage = sk_rs_stage(rs);
    if (e->codec != SK_CODEC_G722 && sk_rs_takes_pcm(rs)) { /* PCM16 -> streams -> codes, no staging */
        const int mode = e->codec == SK_CODEC_PCMU ? SK_OUT_ULAW : SK_OUT_ALAW;
        if (rs->odd && nbytes > 0) { /* a sample split across calls */
            unsigned char pair[2] = {rs->odd_byte, pcm[0]};
            written += sk_rs_push_pcm(rs, pair, 1, out, mode);
            rs->odd = 0;
            pcm++;
            nbytes--;
        }
        while (nbytes > 1) {
            size_t whole = nbytes / 2;
            int c = whole < SK_RS_CHUNK ? (int)whole : SK_RS_CHUNK;
            written += sk_rs_push_pcm(rs, pcm, c, out + written, mode);
            pcm += 2 * (size_t)c;
            nbytes -= 2 * (size_t)c;
        }
        if (nbytes == 1) {
            rs->odd = 1;
            rs->odd_byte = pcm[0];
        }
        return written;
    }
    while (nbytes > 0) {
        int n = 0;
        if (rs->odd) { /* a sample split across calls */
            unsigned char pair[2] = {rs->odd_byte, pcm[0]};
            stage[n++] = (float)load_s16(pair);
            rs->odd = 0;
            pcm++;
            nbytes--;
        }
        size_t whole = nbytes / 2;
        int c = whole < (size_t)(SK_RS_CHUNK - n) ? (int)whole : SK_RS_CHUNK - n;
        load_pcm_float(stage + n, pcm, c);
        n += c;
        pcm += 2 * (size_t)c;
        nbytes -= 2 * (size_t)c;
        if (nbytes == 1) {
            rs->odd = 1;
            rs->odd_byte = pcm[0];
            nbytes = 0;
        }
        if (e->codec != SK_CODEC_G722) { /* codes straight from the resampler's output lanes */
            written += sk_rs_commit_to(rs, n, out + written,
                                       e->codec == SK_CODEC_PCMU ? SK_OUT_ULAW : SK_OUT_ALAW);
        } else {
            size_t k = sk_rs_commit(rs, n, res); /* down-sampling: k <= n/1.5 + 1 */
            sk_g722_encoder *g = &e->g722;
            size_t i = 0;
            if (g->have_held && k > 0) {
                const int16_t pair[2] = {g->held, res[0]};
                sk_g722_encode_block(g, pair, 1, out + written++);
                g->have_held = 0;
                i = 1;
            }
            const int pairs = (int)((k - i) / 2);
            sk_g722_encode_block(g, res + i, pairs, out + written);
            written += (size_t)pairs;
            i += 2 * (size_t)pairs;
            if (i < k) {
                g->held = res[i];
                g->have_held = 1;
            }
        }
    }
    return written;
}

size_t sk_dec24k_push(sk_dec24k *d, const unsigned char *payload, size_t n)
{
    return sk_dec24k_run(d, payload, n, d->out);
}

size_t sk_enc24k_push(sk_enc24k *e, const unsigned char *pcm, size_t nbytes)
{
    e->in_mean_square = sk_mean_square(pcm, nbytes >> 1);
    return sk_enc24k_run(e, pcm, nbytes, e->out);
}

double sk_mean_square(const unsigned char *pcm, size_t n)
{
    if (n == 0)
        return 0.0;
    /* 32 768^2 * 2^32 samples stays below 2^63: exact for any realistic length. Partial sums in
     * 32-bit lanes would overflow after two full-scale samples, so the loop widens to 64 bits. */
    int64_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t v = load_s16(pcm + 2 * i);
        acc += (int64_t)(v * v);
    }
    return (double)acc / (double)n;
}
