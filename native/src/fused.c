/* Fused per-frame paths: payload <-> 24 kHz PCM16 in one call, through a stack scratch buffer. */
#include "sk_internal.h"

#define SCRATCH 512 /* payload bytes handled per inner pass */

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
    int16_t lin[2 * SCRATCH];
    int16_t res[3 * SCRATCH + 4];
    size_t written = 0;
    while (n > 0) {
        size_t c = n < SCRATCH ? n : SCRATCH;
        size_t m;
        if (d->codec == SK_CODEC_G722) {
            for (size_t i = 0; i < c; i++)
                sk_g722_decode_code(&d->g722, payload[i], lin + 2 * i);
            m = 2 * c;
        } else if (d->codec == SK_CODEC_PCMU) {
            for (size_t i = 0; i < c; i++)
                lin[i] = (int16_t)sk_ulaw_to_linear(payload[i]);
            m = c;
        } else {
            for (size_t i = 0; i < c; i++)
                lin[i] = (int16_t)sk_alaw_to_linear(payload[i]);
            m = c;
        }
        size_t k = sk_resampler_run(&d->rs, lin, m, res);
        for (size_t i = 0; i < k; i++)
            store_s16(out + 2 * (written + i), res[i]);
        written += k;
        payload += c;
        n -= c;
    }
    return 2 * written;
}

size_t sk_enc24k_run(sk_enc24k *e, const unsigned char *pcm, size_t nbytes, unsigned char *out)
{
    int16_t lin[SCRATCH];
    int16_t res[SCRATCH];
    size_t written = 0;
    sk_resampler *rs = &e->rs;
    while (nbytes > 0) {
        size_t n = 0;
        if (rs->odd) { /* a sample split across calls */
            unsigned char pair[2] = {rs->odd_byte, pcm[0]};
            lin[n++] = (int16_t)load_s16(pair);
            rs->odd = 0;
            pcm++;
            nbytes--;
        }
        while (n < SCRATCH && nbytes >= 2) {
            lin[n++] = (int16_t)load_s16(pcm);
            pcm += 2;
            nbytes -= 2;
        }
        if (nbytes == 1) {
            rs->odd = 1;
            rs->odd_byte = pcm[0];
            nbytes = 0;
        }
        size_t k = sk_resampler_run(rs, lin, n, res); /* down-sampling: k <= n/1.5 + 1 */
        if (e->codec == SK_CODEC_PCMU) {
            for (size_t i = 0; i < k; i++)
                out[written + i] = sk_ulaw_from_linear(res[i]);
            written += k;
        } else if (e->codec == SK_CODEC_PCMA) {
            for (size_t i = 0; i < k; i++)
                out[written + i] = sk_alaw_from_linear(res[i]);
            written += k;
        } else {
            sk_g722_encoder *g = &e->g722;
            for (size_t i = 0; i < k; i++) {
                if (!g->have_held) {
                    g->held = res[i];
                    g->have_held = 1;
                } else {
                    out[written++] = sk_g722_encode_pair(g, g->held, res[i]);
                    g->have_held = 0;
                }
            }
        }
    }
    return written;
}
