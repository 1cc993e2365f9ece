/* The constant tables of G.722 (64 kbit/s), from the Recommendation: shared by the per-call coder
 * (g722.c) and the one that codes several calls side by side (g722_lanes.c). */
#ifndef SK_G722_TABLES_H
#define SK_G722_TABLES_H

#if defined(__GNUC__)
#define SK_TABLE static const __attribute__((unused))
#else
#define SK_TABLE static const
#endif

/* Even-indexed QMF coefficients h(2i); the odd ones are the same values in reverse order. */
SK_TABLE int qmf_h[12] = {3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11};

/* Lower band: 6-bit quantiser decision levels (code assignment: code6 in g722.c). */
SK_TABLE int q6[31] = {0,    35,   72,   110,  150,  190,  233,  276,  323,  370,  422,
                       473,  530,  587,  650,  714,  786,  858,  940,  1023, 1121, 1219,
                       1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 0};

/* Inverse quantisers: 4-bit (predictor feedback), 6-bit (lower band output), 2-bit (higher band). */
SK_TABLE int qm4[16] = {0,    -20456, -12896, -8968, -6288, -4240, -2584, -1200,
                        20456, 12896, 8968,   6288,  4240,  2584,  1200,  0};
SK_TABLE int qm6[64] = {
    -136,  -136,  -136,  -136,  -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576,  -6000,  -5456,  -4944,  -4464,  -4008,  -3576,  -3168,  -2776,
    -2400, -2032, -1688, -1360, -1040,  -728,   24808,  21904,  19008,  16704,  14984,  13512,  12280,
    11192, 10232, 9360,  8576,  7856,   7192,   6576,   6000,   5456,   4944,   4464,   4008,   3576,
    3168,  2776,  2400,  2032,  1688,   1360,   1040,   728,    432,    136,    -432,   -136};
SK_TABLE int qm2[4] = {-7408, -1616, 7408, 1616};
/* Log scale factor adaptation: multipliers per (truncated) code. */
SK_TABLE int wl[8] = {-60, -30, 58, 172, 334, 538, 1198, 3042};
SK_TABLE int rl42[16] = {0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0};
SK_TABLE int wh[3] = {0, -214, 798};
SK_TABLE int rh2[4] = {2, 1, 2, 1};
/* Antilog table for the scale factor: 2048 * 2^(i/32). */
SK_TABLE int ilb[32] = {2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543,
                        2599, 2656, 2714, 2774, 2834, 2896, 2960, 3025, 3091, 3158, 3228,
                        3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008};

#endif
