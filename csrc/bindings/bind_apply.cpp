#include "pybind.hpp"

#include "mpo/apply.hpp"
#include "mpo/checked.hpp"
#include "mpo/parallel.hpp"
#include "mpo/runtime_gemm.hpp"

#include <cstring>

namespace mpo::bindings {

namespace {

// NumPy cores of dtype T as views (no copy when they already are C-contiguous T, the MPO's case). The
// arrays are returned too: they own the buffers the views point into and must outlive the kernel.
template <class T>
std::vector<CoreView<T>> core_views(const py::list& arrays, std::vector<py::array_t<T>>* owners) {
  std::vector<CoreView<T>> views;
  std::size_t k = 0;
  for (const py::handle& item : arrays) {
    auto a = core_array<T>(item, k);
    CoreView<T> v;
    v.shape = {a.shape(0), a.shape(1), a.shape(2), a.shape(3)};
    v.data = a.data();
    views.push_back(v);
    owners->push_back(std::move(a));
    ++k;
  }
  return views;
}

template <class T>
py::array apply_typed(const py::list& cores, bool transposed, const py::array& x, bool batch_last,
                      Index out_width, PlanKind kind, bool merge) {
  std::vector<py::array_t<T>> owners;
  const std::vector<CoreView<T>> views = core_views<T>(cores, &owners);
  auto a = py::array_t<T, py::array::c_style>::ensure(x);
  if (!a) throw py::type_error("apply: expected a C-contiguous array");
  const Index batch = batch_last ? a.shape(1) : a.shape(0);
  const Index width = batch_last ? a.shape(0) : a.shape(1);
  std::vector<py::ssize_t> shape = batch_last ? std::vector<py::ssize_t>{out_width, batch}
                                              : std::vector<py::ssize_t>{batch, out_width};
  py::array_t<T> out(shape);
  T* target = out.mutable_data();
  {
    // Every Python object has been read or allocated; the kernel touches only these buffers.
    py::gil_scoped_release release;
    apply<T>(views, transposed, a.data(), batch, width, batch_last, target, out_width, kind, merge);
  }
  return std::move(out);
}

template <class T>
py::array rows_typed(const py::list& cores, bool transposed, const std::vector<Index>& ids, Index out_width) {
  std::vector<py::array_t<T>> owners;
  const std::vector<CoreView<T>> views = core_views<T>(cores, &owners);
  py::array_t<T> out(std::vector<py::ssize_t>{static_cast<py::ssize_t>(ids.size()), out_width});
  T* target = out.mutable_data();
  {
    py::gil_scoped_release release;  // after all casting: the kernel reads only C++ buffers
    rows<T>(views, transposed, ids, target, out_width);
  }
  return std::move(out);
}

template <class T>
py::array multiply_out_typed(const py::list& cores) {
  std::vector<py::array_t<T>> owners;
  const std::vector<CoreView<T>> views = core_views<T>(cores, &owners);
  std::vector<CoreShape> shapes;
  for (const CoreView<T>& c : views) shapes.push_back(c.shape);
  check_chain(shapes);  // before the sizes below are trusted: it refuses sides that overflow
  Index rows = 1, cols = 1;
  for (const CoreShape& c : shapes) {
    rows *= c.rows;
    cols *= c.cols;
  }
  checked_product({rows, cols}, "the multiplied-out matrix");
  // NumPy's allocator, not Eigen's: it asks for huge pages for a large array (see multiply_out_into).
  py::array_t<T> out({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
  T* target = out.mutable_data();
  {
    py::gil_scoped_release release;  // after all casting: the kernel reads only C++ buffers
    multiply_out_into<T>(views, target);
  }
  return std::move(out);
}

std::vector<CoreShape> shapes_from(const std::vector<std::vector<Index>>& shapes) {
  std::vector<CoreShape> out;
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    if (shapes[k].size() != 4)
      throw py::value_error("core shape " + std::to_string(k) + " must have 4 entries, got " +
                            std::to_string(shapes[k].size()));
    out.push_back({shapes[k][0], shapes[k][1], shapes[k][2], shapes[k][3]});
  }
  return out;
}

// The function pointer in a SciPy cython_blas capsule, after checking that the capsule's name is the
// signature mpo calls (a capsule from anywhere is not trusted: a wrong pointer would crash the process).
template <class Fn>
Fn gemm_from_capsule(const py::handle& capsule, const char* scalar, const char* what) {
  if (!PyCapsule_CheckExact(capsule.ptr()))
    throw py::type_error(std::string("set_runtime_gemm: ") + what + " must be a capsule, got " +
                         py::str(py::type::of(capsule)).cast<std::string>());
  const char* name = PyCapsule_GetName(capsule.ptr());
  const std::string expected = std::string("void (char *, char *, int *, int *, int *, ") + scalar;
  if (name == nullptr || std::strncmp(name, expected.c_str(), expected.size()) != 0 ||
      std::string(name).find("cython_blas") == std::string::npos)
    throw py::value_error(std::string("set_runtime_gemm: ") + what +
                          " must be scipy.linalg.cython_blas's capsule of that name, got a capsule named " +
                          (name == nullptr ? std::string("(none)") : std::string(name)));
  void* pointer = PyCapsule_GetPointer(capsule.ptr(), name);
  if (pointer == nullptr) throw py::error_already_set();
  return reinterpret_cast<Fn>(pointer);
}

}  // namespace

void register_apply(py::module_& m) {
  m.def(
      "set_runtime_gemm",
      [](const py::object& sgemm, const py::object& dgemm) {
        if (sgemm.is_none() && dgemm.is_none()) {
          set_runtime_gemm(nullptr, nullptr);
          return;
        }
        if (sgemm.is_none() || dgemm.is_none())
          throw py::value_error("set_runtime_gemm: give both sgemm and dgemm, or None for both to clear");
        const auto s = gemm_from_capsule<SgemmFn>(sgemm, "__pyx_t_5scipy_6linalg_11cython_blas_s *", "sgemm");
        const auto d = gemm_from_capsule<DgemmFn>(dgemm, "__pyx_t_5scipy_6linalg_11cython_blas_d *", "dgemm");
        set_runtime_gemm(s, d);
      },
      py::arg("sgemm"), py::arg("dgemm"),
      "Merge products through these GEMMs (scipy.linalg.cython_blas.__pyx_capi__['sgemm'], ['dgemm']);\n"
      "None, None clears them (Eigen's GEMM everywhere).");
  m.def("has_runtime_gemm", &has_runtime_gemm, "Whether a runtime GEMM is set (see set_runtime_gemm).");
  m.def("runtime_gemm_calls", &runtime_gemm_calls, "Products the runtime GEMM has made in this process.");
  m.def("kernel_threads", &thread_count, "Threads the core's large products use (MPO_NUM_THREADS, read once).");
  m.def(
      "apply",
      [](const py::list& cores, bool transposed, const py::array& x, bool batch_last, Index out_width,
         const std::string& plan, bool merge) {
        const PlanKind kind = parse_plan(plan);
        if (x.ndim() != 2)
          throw py::value_error("apply: expected a 2-D array, got " + std::to_string(x.ndim()) +
                                " dimensions");
        if (py::isinstance<py::array_t<float>>(x))
          return apply_typed<float>(cores, transposed, x, batch_last, out_width, kind, merge);
        if (py::isinstance<py::array_t<double>>(x))
          return apply_typed<double>(cores, transposed, x, batch_last, out_width, kind, merge);
        throw py::type_error("apply: expected float32 or float64, got " + dtype_name(x));
      },
      py::arg("cores"), py::arg("transposed"), py::arg("x"), py::arg("batch_last"), py::arg("out_width"),
      py::arg("plan") = "auto", py::arg("merge") = true,
      "X @ M (X @ M.T when transposed) through the cores, X (batch, width) C-contiguous, or M @ X with\n"
      "batch_last and X (width, batch). Cores are converted to X's dtype. plan: auto/left/right/central;\n"
      "merge=False forbids merging neighbouring cores before the sweep.");
  m.def(
      "rows",
      [](const py::list& cores, bool transposed,
         const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>& id_array,
         Index out_width, const std::string& dtype) {
        if (id_array.ndim() != 1)
          throw py::value_error("rows: ids must be 1-D, got " + std::to_string(id_array.ndim()) +
                                " dimensions");
        const std::vector<Index> ids(id_array.data(), id_array.data() + id_array.shape(0));
        return dispatch_dtype(dtype, "rows", [&](auto tag) {
          return rows_typed<decltype(tag)>(cores, transposed, ids, out_width);
        });
      },
      py::arg("cores"), py::arg("transposed"), py::arg("ids"), py::arg("out_width"), py::arg("dtype"),
      "Rows ids of M (of M.T when transposed) as a (len(ids), out_width) array; ids in [0, padded rows).");
  m.def(
      "multiply_out",
      [](const py::list& cores, const std::string& dtype) {
        return dispatch_dtype(dtype, "multiply_out",
                              [&](auto tag) { return multiply_out_typed<decltype(tag)>(cores); });
      },
      py::arg("cores"), py::arg("dtype"),
      "The padded dense matrix of the cores, multiplied out along the cheapest tree of products.");
  m.def(
      "apply_plan",
      [](const std::vector<std::vector<Index>>& shapes, Index batch, bool transposed, const std::string& plan,
         bool merge) {
        const ApplyPlan p = plan_apply(shapes_from(shapes), batch, transposed, parse_plan(plan), merge);
        return py::make_tuple(plan_name(p.kind), p.order, p.flops, p.groups, p.merge_flops);
      },
      py::arg("core_shapes"), py::arg("batch"), py::arg("transposed"), py::arg("plan") = "auto",
      py::arg("merge") = true,
      "(order name, order of the merged cores, FLOPs, sizes of the merged runs, FLOPs of merging) of\n"
      "the plan apply uses for this batch size.");
}

}  // namespace mpo::bindings
