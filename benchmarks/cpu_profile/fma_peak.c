/* The CPU's float32 FMA peak per thread: 12 independent AVX2 FMA chains (enough to hide the FMA
 * latency), nothing else. Built and run by roofline.py:
 *   cc -O2 -mavx2 -mfma -fopenmp fma_peak.c -o fma_peak && OMP_NUM_THREADS=2 ./fma_peak
 * Prints one line per thread: "thread <i> <GFLOP/s>". */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

int main(void) {
#pragma omp parallel
  {
    __m256 acc[12];
    for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_ps(i * 0.001f);
    const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(0.0001f);
    const long n = 100000000;
    const double t0 = omp_get_wtime();
    for (long it = 0; it < n; it++) {
#pragma GCC unroll 12
      for (int i = 0; i < 12; i++) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
    }
    const double t = omp_get_wtime() - t0;
    float sink = 0.0f, lanes[8];
    for (int i = 0; i < 12; i++) {
      _mm256_storeu_ps(lanes, acc[i]);
      sink += lanes[0];
    }
#pragma omp critical
    printf("thread %d %.2f %g\n", omp_get_thread_num(), n * 12 * 16.0 / t / 1e9, sink);
  }
  return 0;
}
