// The one header every binding file includes first, so all of them see the same pybind11 setup and the
// same array conversions (one place for the array contract of STYLE.md §4).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "mpo/types.hpp"

#include <string>
#include <vector>

namespace mpo::bindings {

namespace py = pybind11;

// Hand an Eigen matrix to NumPy without copying: the array owns the moved matrix through a capsule.
template <class T>
py::array_t<T> to_numpy(Matrix<T>&& matrix, const std::vector<py::ssize_t>& shape) {
  auto* owner = new Matrix<T>(std::move(matrix));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<Matrix<T>*>(p); });
  std::vector<py::ssize_t> strides(shape.size());
  py::ssize_t stride = static_cast<py::ssize_t>(sizeof(T));
  for (std::size_t a = shape.size(); a-- > 0;) {
    strides[a] = stride;
    stride *= shape[a];
  }
  return py::array_t<T>(shape, strides, owner->data(), free_when_done);
}

inline py::array_t<double> to_numpy(const Spectrum& v) {
  py::array_t<double> out(v.size());
  std::copy(v.data(), v.data() + v.size(), out.mutable_data());
  return out;
}

template <class T>
py::array_t<T> core_to_numpy(Core<T>&& core) {
  std::vector<py::ssize_t> shape{core.left_bond, core.rows, core.cols, core.right_bond};
  return to_numpy<T>(std::move(core.data), shape);
}

// Core k as a C-contiguous 4-way array of T (no copy when it already is one).
template <class T>
py::array_t<T, py::array::c_style | py::array::forcecast> core_array(const py::handle& item, std::size_t k) {
  auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(item);
  if (!a) throw py::type_error("core " + std::to_string(k) + " is not a numeric array");
  if (a.ndim() != 4)
    throw py::value_error("core " + std::to_string(k) + " must be 4-way (d_{k-1}, i_k, j_k, d_k), got " +
                          std::to_string(a.ndim()) + " dimensions");
  return a;
}

// A list of 4-way NumPy arrays (d_{k-1}, i_k, j_k, d_k) -> cores (copied; cores are small).
template <class T>
std::vector<Core<T>> cores_from_numpy(const py::list& arrays) {
  std::vector<Core<T>> cores;
  cores.reserve(arrays.size());
  std::size_t k = 0;
  for (const py::handle& item : arrays) {
    const auto a = core_array<T>(item, k);
    Core<T> c;
    c.left_bond = a.shape(0);
    c.rows = a.shape(1);
    c.cols = a.shape(2);
    c.right_bond = a.shape(3);
    c.data = ConstMatrixMap<T>(a.data(), c.left_bond * c.rows * c.cols, c.right_bond);
    cores.push_back(std::move(c));
    ++k;
  }
  return cores;
}

// Run body(float{}) or body(double{}) for a dtype name, the one rule every typed entry point shares:
// any other name is a TypeError naming the function and the name.
template <class F>
py::object dispatch_dtype(const std::string& dtype, const char* function, F&& body) {
  if (dtype == "float32") return body(float{});
  if (dtype == "float64") return body(double{});
  throw py::type_error(std::string(function) + ": dtype must be 'float32' or 'float64', got '" + dtype + "'");
}

inline std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

void register_decompose(py::module_& m);
void register_contract(py::module_& m);
void register_measures(py::module_& m);
void register_apply(py::module_& m);

}  // namespace mpo::bindings
