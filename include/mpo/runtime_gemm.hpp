// A GEMM handed to the core at run time: the BLAS the Python process has loaded (SciPy's, through its
// documented cython_blas capsules), used for the large products of merging cores.
//
// Why. The core's own GEMM is Eigen's, fixed when the module was built. How it compares with the
// machine's BLAS depends on the machine: on an AVX-512 EPYC Eigen's beat OpenBLAS, on an AVX2 EPYC it
// ran at 64-84 % of OpenBLAS's speed (issue 20). A product that multiplies cores out is decided by such
// a GEMM, so where a runtime GEMM is set, merge.cpp hands it the block products of a merge; everything
// else (and every product while none is set) stays on Eigen. The switch is set_runtime_gemm: nothing is
// set unless the caller sets it, and clearing it restores the plain route.
#pragma once

#include "mpo/types.hpp"

namespace mpo {

// The Fortran BLAS signatures (column-major, 32-bit integers, every argument by pointer).
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);
using DgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                         const int*, const double*, const int*, const double*, double*, const int*);

// Multiply-adds below which a product stays on Eigen even where a runtime GEMM is set: a BLAS call's
// fixed cost (argument checks, threads) shows below about this size.
constexpr double kRuntimeGemmMin = 1 << 18;

// Set both GEMMs, or clear them (nullptr, nullptr). Set it while no product runs: products read it as
// they start their GEMMs.
void set_runtime_gemm(SgemmFn sgemm, DgemmFn dgemm);
bool has_runtime_gemm();
// Products the runtime GEMM has made since the process started (the tests' evidence that it ran).
long runtime_gemm_calls();

// c (m × n, row-major, leading dimension ldc) = a (m × k, lda) · b (k × n, ldb), both row-major, by the
// runtime GEMM; with `accumulate`, c += a · b. Returns false, having done nothing, where none is set or
// a size does not fit its 32-bit integers: the caller then runs its own GEMM.
template <class T>
bool runtime_gemm(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc,
                  bool accumulate = false);

}  // namespace mpo
