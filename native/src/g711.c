/* G.711 μ-law and A-law.
 *
 * μ-law follows the Sun/CCITT lineage (the table of Python's audioop): the 16-bit sample is reduced to
 * 14 bits with an arithmetic shift, so -1..-4 encode to 0x7E, not to the ITU G.191 reference's 0x7F.
 * A-law and both decoders agree across all common implementations.
 */
#include "sk_internal.h"

/* Segment number: how many of the octave boundaries `v` lies above (0..8). */
static inline int segment(int v, int first_end)
{
    int seg = 0;
    for (int i = 0; i < 8; i++)
        seg += v > ((first_end << i) | ((1 << i) - 1));
    return seg;
}

unsigned char sk_ulaw_from_linear(int sample)
{
    int v = sample >> 2; /* 14-bit magnitude domain */
    int mask = 0xFF;
    if (v < 0) {
        v = -v;
        mask = 0x7F;
    }
    if (v > 8159)
        v = 8159;
    v += 33; /* bias: makes every segment start at a power of two */
    int seg = segment(v, 0x3F);
    if (seg >= 8)
        return (unsigned char)(0x7F ^ mask);
    return (unsigned char)(((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask);
}

int sk_ulaw_to_linear(unsigned char code)
{
    int u = ~code & 0xFF;
    int t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4);
    return (u & 0x80) ? (0x84 - t) : (t - 0x84);
}

unsigned char sk_alaw_from_linear(int sample)
{
    int v = sample >> 3; /* 13-bit domain */
    int mask = 0xD5;
    if (v < 0) {
        v = -v - 1;
        mask = 0x55;
    }
    int seg = segment(v, 0x1F); /* v <= 4095, so seg <= 7 */
    int mant = seg < 2 ? (v >> 1) & 0x0F : (v >> seg) & 0x0F;
    return (unsigned char)(((seg << 4) | mant) ^ mask);
}

int sk_alaw_to_linear(unsigned char code)
{
    int a = code ^ 0x55;
    int seg = (a & 0x70) >> 4;
    int t = ((a & 0x0F) << 4) + (seg == 0 ? 8 : 0x108);
    if (seg > 1)
        t <<= seg - 1;
    return (a & 0x80) ? t : -t;
}

void sk_ulaw_encode(const unsigned char *pcm, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = sk_ulaw_from_linear(load_s16(pcm + 2 * i));
}

void sk_ulaw_decode(const unsigned char *in, size_t n, unsigned char *pcm)
{
    for (size_t i = 0; i < n; i++)
        store_s16(pcm + 2 * i, sk_ulaw_to_linear(in[i]));
}

void sk_alaw_encode(const unsigned char *pcm, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = sk_alaw_from_linear(load_s16(pcm + 2 * i));
}

void sk_alaw_decode(const unsigned char *in, size_t n, unsigned char *pcm)
{
    for (size_t i = 0; i < n; i++)
        store_s16(pcm + 2 * i, sk_alaw_to_linear(in[i]));
}
