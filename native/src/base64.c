/* Base64 (RFC 4648, standard alphabet, padded) both ways, for the Realtime API's JSON audio: encoding
 * every caller frame (sk_frame_push) and strictly decoding the model's deltas.
 *
 * CPython's decoder handles a 40 ms delta (2 560 characters) in about 5-8 us because it also skips
 * characters outside the alphabet one by one; audio from the API is canonical base64, so this one
 * takes four characters per step and rejects anything else: the caller then falls back to the lenient
 * decoder, which keeps its behaviour for odd input.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "sipagent_kernel.h"

/* Each character's 6-bit value plus one, so that the zero of every other entry marks it invalid and the
 * table stays a constant ('=' is invalid here: padding is handled apart). */
#define S(ch, value) [(unsigned char)(ch)] = (value) + 1
static const uint8_t SEXTET_PLUS_1[256] = {
    S('A', 0), S('B', 1), S('C', 2), S('D', 3), S('E', 4), S('F', 5), S('G', 6), S('H', 7),
    S('I', 8), S('J', 9), S('K', 10), S('L', 11), S('M', 12), S('N', 13), S('O', 14), S('P', 15),
    S('Q', 16), S('R', 17), S('S', 18), S('T', 19), S('U', 20), S('V', 21), S('W', 22), S('X', 23),
    S('Y', 24), S('Z', 25), S('a', 26), S('b', 27), S('c', 28), S('d', 29), S('e', 30), S('f', 31),
    S('g', 32), S('h', 33), S('i', 34), S('j', 35), S('k', 36), S('l', 37), S('m', 38), S('n', 39),
    S('o', 40), S('p', 41), S('q', 42), S('r', 43), S('s', 44), S('t', 45), S('u', 46), S('v', 47),
    S('w', 48), S('x', 49), S('y', 50), S('z', 51), S('0', 52), S('1', 53), S('2', 54), S('3', 55),
    S('4', 56), S('5', 57), S('6', 58), S('7', 59), S('8', 60), S('9', 61), S('+', 62), S('/', 63),
};
#undef S

/* A sextet, or a value with bit 6 or 7 set (0xFF) for a character outside the alphabet. */
#define SEXTET(ch) ((uint32_t)(uint8_t)(SEXTET_PLUS_1[ch] - 1))

int64_t sk_b64_decode(const unsigned char *in, size_t n, unsigned char *out)
{
    if (n % 4 != 0)
        return -1;
    if (n == 0)
        return 0;
    size_t pad = (in[n - 1] == '=') + (in[n - 2] == '=' && in[n - 1] == '=');
    size_t quads = n / 4 - (pad != 0);
    unsigned char *o = out;
    for (size_t q = 0; q < quads; q++, in += 4, o += 3) {
        uint32_t a = SEXTET(in[0]), b = SEXTET(in[1]), c = SEXTET(in[2]), d = SEXTET(in[3]);
        if ((a | b | c | d) & 0xC0)
            return -1;
        uint32_t v = a << 18 | b << 12 | c << 6 | d;
        o[0] = (unsigned char)(v >> 16);
        o[1] = (unsigned char)(v >> 8);
        o[2] = (unsigned char)v;
    }
    if (pad) {
        uint32_t a = SEXTET(in[0]), b = SEXTET(in[1]);
        uint32_t c = pad == 1 ? SEXTET(in[2]) : 0;
        if ((a | b | c) & 0xC0)
            return -1;
        /* Canonical only: the bits after the last whole byte must be zero, as every encoder writes. */
        if (pad == 2 ? (b & 0x0F) : (c & 0x03))
            return -1;
        uint32_t v = a << 18 | b << 12 | c << 6;
        *o++ = (unsigned char)(v >> 16);
        if (pad == 1)
            *o++ = (unsigned char)(v >> 8);
    }
    return (int64_t)(o - out);
}

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
