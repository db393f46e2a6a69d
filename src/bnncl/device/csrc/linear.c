/* Float32 matrix product in a fixed summation order: out = a @ b, a (n, k), b (k, m), row-major.
 *
 * out[i, j] = (((a[i,0] b[0,j] + a[i,1] b[1,j]) + a[i,2] b[2,j]) + ...): products rounded to float32,
 * then added one by one in increasing k, starting from +0.  No FMA contraction (-ffp-contract=off) and
 * no reassociation, so every path (scalar, avx2, avx512: the same body compiled for each target, the
 * vector lanes running over j) and the NumPy oracle (bnncl.device.kernels.linear) give the same bits,
 * and a row's result does not depend on how many other rows are in the call.  That is what BLAS does
 * not promise: its blocking, and so the rounding, changes with the batch size, the library version
 * and the thread count.  Used for the heads (bnncl.device.frozen, bnncl.device.tail).
 *
 *   bnncl_matmul_f32   out = a @ b, summed over k in order
 */
#include <stdint.h>

#include "bnncl_core.h"

#if defined(__x86_64__)
#define LIN_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define LIN_T256 __attribute__((target("avx2")))
#endif
#define LIN_INL static inline __attribute__((always_inline))

LIN_INL void matmul_body(const float *restrict a, const float *restrict b, int64_t n, int64_t k, int64_t m,
                         float *restrict out) {
    for (int64_t i = 0; i < n; ++i) {
        float *restrict o = out + i * m;
        const float *ai = a + i * k;
        for (int64_t j = 0; j < m; ++j) o[j] = 0.0f;
        for (int64_t t = 0; t < k; ++t) {
            const float x = ai[t];
            const float *restrict bt = b + t * m;
            for (int64_t j = 0; j < m; ++j) o[j] = o[j] + x * bt[j];
        }
    }
}

static void matmul_scalar(const float *a, const float *b, int64_t n, int64_t k, int64_t m, float *out) {
    matmul_body(a, b, n, k, m, out);
}
#if defined(__x86_64__)
static LIN_T256 void matmul_avx2(const float *a, const float *b, int64_t n, int64_t k, int64_t m, float *out) {
    matmul_body(a, b, n, k, m, out);
}
static LIN_T512 void matmul_avx512(const float *a, const float *b, int64_t n, int64_t k, int64_t m, float *out) {
    matmul_body(a, b, n, k, m, out);
}
#endif

int bnncl_matmul_f32(const float *a, const float *b, int64_t n, int64_t k, int64_t m, float *out, int path) {
    if (path < 0 || !(bnncl_supported_paths() & (1 << path))) return 1;
    if (n < 0 || k < 0 || m < 0) return 3;
#if defined(__x86_64__)
    if (path == BNNCL_PATH_AVX512) {
        matmul_avx512(a, b, n, k, m, out);
        return 0;
    }
    if (path == BNNCL_PATH_AVX2) {
        matmul_avx2(a, b, n, k, m, out);
        return 0;
    }
#endif
    matmul_scalar(a, b, n, k, m, out);
    return 0;
}
