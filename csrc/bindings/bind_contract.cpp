#include "pybind.hpp"

#include "mpo/contract.hpp"

namespace mpo::bindings {

namespace {
template <class T>
py::array_t<T> rebuild_typed(const py::list& arrays) {
  std::vector<Core<T>> cores = cores_from_numpy<T>(arrays);
  Matrix<T> dense;
  {
    py::gil_scoped_release release;
    dense = rebuild<T>(cores);
  }
  const std::vector<py::ssize_t> shape{dense.rows(), dense.cols()};
  return to_numpy<T>(std::move(dense), shape);
}
}  // namespace

void register_contract(py::module_& m) {
  m.def(
      "rebuild",
      [](const py::list& cores, const std::string& dtype) {
        return dispatch_dtype(dtype, "rebuild", [&](auto tag) { return rebuild_typed<decltype(tag)>(cores); });
      },
      py::arg("cores"), py::arg("dtype"),
      "Contract the cores into the dense (prod i_k) x (prod j_k) matrix.");
}

}  // namespace mpo::bindings
