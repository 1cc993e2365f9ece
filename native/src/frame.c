/* One received 20 ms frame in one call: payload -> 24 kHz PCM16 (the fused decoder), the mean square
 * of that PCM (the VAD's level), and the base64 text the frame is forwarded as (the Realtime API's
 * input_audio_buffer.append is JSON with the audio in base64; the caller gives the JSON around it).
 * Per frame this replaces three FFI crossings and two Python objects with one crossing. */
#include "sk_internal.h"

/* Base64 alphabet as arithmetic, so the pair table below is a compile-time constant. */
#define B64C(x) ((x) < 26 ? 'A' + (x) : (x) < 52 ? 'a' + (x) - 26 : (x) < 62 ? '0' + (x) - 52 : (x) == 62 ? '+' : '/')
#define B64P(i) {B64C((i) >> 6), B64C((i) & 63)}
#define P4(i) B64P(i), B64P((i) + 1), B64P((i) + 2), B64P((i) + 3)
#define P16(i) P4(i), P4((i) + 4), P4((i) + 8), P4((i) + 12)
#define P64(i) P16(i), P16((i) + 16), P16((i) + 32), P16((i) + 48)
#define P256(i) P64(i), P64((i) + 64), P64((i) + 128), P64((i) + 192)
#define P1024(i) P256(i), P256((i) + 256), P256((i) + 512), P256((i) + 768)
/* The two characters of every 12-bit value: one lookup per two output characters instead of one each. */
static const char b64_pairs[4096][2] = {P1024(0), P1024(1024), P1024(2048), P1024(3072)};

size_t sk_base64(const unsigned char *in, size_t n, unsigned char *out)
{
    unsigned char *o = out;
    size_t i = 0;
    for (; i + 3 <= n; i += 3, o += 4) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        memcpy(o, b64_pairs[v >> 12], 2);
        memcpy(o + 2, b64_pairs[v & 0xFFF], 2);
    }
    if (i < n) { /* one or two bytes left: two or three characters, then '=' padding */
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        memcpy(o, b64_pairs[v >> 12], 2);
        o[2] = i + 1 < n ? (unsigned char)b64_pairs[v & 0xFFF][0] : '=';
        o[3] = '=';
        o += 4;
    }
    return (size_t)(o - out);
}

int sk_frame_decoder_init(sk_frame_decoder *f, int codec, int text_of, const unsigned char *head,
                          size_t head_len, const unsigned char *tail, size_t tail_len)
{
    memset(f, 0, sizeof(*f)); /* the caller sets dec.out and text after init */
    if (text_of < SK_TEXT_NONE || text_of > SK_TEXT_PAYLOAD || head_len > SK_TEXT_MAX_HEAD ||
        tail_len > SK_TEXT_MAX_TAIL)
        return -1;
    f->text_of = text_of;
    f->head_len = (int32_t)head_len;
    f->tail_len = (int32_t)tail_len;
    if (head_len)
        memcpy(f->head, head, head_len);
    if (tail_len)
        memcpy(f->tail, tail, tail_len);
    return sk_dec24k_init(&f->dec, codec);
}

double sk_frame_push(sk_frame_decoder *f, const unsigned char *payload, size_t n)
{
    f->pcm_len = sk_dec24k_push(&f->dec, payload, n);
    if (f->text_of != SK_TEXT_NONE) {
        /* head and tail are copied every time (a few dozen bytes): the caller may move the buffer */
        unsigned char *t = f->text;
        memcpy(t, f->head, (size_t)f->head_len);
        t += f->head_len;
        t += f->text_of == SK_TEXT_PCM ? sk_base64(f->dec.out, f->pcm_len, t) : sk_base64(payload, n, t);
        memcpy(t, f->tail, (size_t)f->tail_len);
        f->text_len = (size_t)(t - f->text) + (size_t)f->tail_len;
    }
    return sk_mean_square(f->dec.out, f->pcm_len >> 1);
}
