/* im2col of a uint8 NHWC image for the real-valued 3x3 stem conv (stride 1, zero padding 1):
 * cols[(b*h + y)*w + x][(ky*3 + kx)*c + ci] = float(x[b, y+ky-1, x+kx-1, ci]) or 0 outside. */
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

void bnncl_im2col3x3_u8(const uint8_t *x, int64_t n, int64_t h, int64_t w, int64_t c, float *cols,
                        int threads) {
    const int64_t k = 9 * c, lines = n * h;
    if (threads < 1) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t line = 0; line < lines; ++line) {
        const int64_t b = line / h, y = line % h;
        for (int64_t xx = 0; xx < w; ++xx) {
            float *restrict dst = cols + (line * w + xx) * k;
            const int interior_x = xx >= 1 && xx + 1 < w;
            for (int64_t ky = 0; ky < 3; ++ky, dst += 3 * c) {
                const int64_t iy = y + ky - 1;
                if (iy < 0 || iy >= h) {
                    memset(dst, 0, (size_t)(3 * c) * sizeof(float));
                } else if (interior_x) { /* the 3 taps of a kernel row: one run of 3c bytes */
                    const uint8_t *restrict src = x + ((b * h + iy) * w + xx - 1) * c;
                    for (int64_t i = 0; i < 3 * c; ++i) dst[i] = (float)src[i];
                } else {
                    for (int64_t kx = 0; kx < 3; ++kx) {
                        const int64_t ix = xx + kx - 1;
                        float *restrict d = dst + kx * c;
                        if (ix < 0 || ix >= w) {
                            memset(d, 0, (size_t)c * sizeof(float));
                        } else {
                            const uint8_t *restrict src = x + ((b * h + iy) * w + ix) * c;
                            for (int64_t ci = 0; ci < c; ++ci) d[ci] = (float)src[ci];
                        }
                    }
                }
            }
        }
    }
}
