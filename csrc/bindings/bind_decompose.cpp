#include "pybind.hpp"

#include "mpo/decompose.hpp"
#include "mpo/sweep.hpp"
#include "mpo/symmetric.hpp"

namespace mpo::bindings {

namespace {

// A Decomposition as the dict decompose() returns: cores, spectra, truncation_errors, cut, norm, randomized.
template <class T>
py::dict decomposition_dict(Decomposition<T>&& d) {
  py::list cores, spectra;
  for (Core<T>& c : d.cores) cores.append(core_to_numpy<T>(std::move(c)));
  for (const Spectrum& s : d.spectra) spectra.append(to_numpy(s));
  py::dict out;
  out["cores"] = cores;
  out["spectra"] = spectra;
  out["truncation_errors"] = py::array_t<double>(static_cast<py::ssize_t>(d.truncation_errors.size()),
                                                 d.truncation_errors.data());
  out["cut"] = py::cast(d.cut);
  out["norm"] = d.norm;
  out["randomized"] = d.randomized;
  return out;
}

template <class T>
py::dict decompose_typed(const py::array& matrix, const Factors& factors, const DecomposeOptions& options) {
  auto a = py::array_t<T, py::array::c_style>::ensure(matrix);
  if (!a) throw py::type_error("decompose: expected a C-contiguous array");
  const Index rows = a.shape(0), cols = a.shape(1);
  Decomposition<T> d;
  {
    // Every Python object has been read; the kernel touches only this buffer and C++ state.
    py::gil_scoped_release release;
    d = decompose<T>(a.data(), rows, cols, factors, options);
  }
  return decomposition_dict<T>(std::move(d));
}

// canonicalize or order_bonds (`reorder`) on cores from Python; returns (cores, spectra).
template <class T, class Reorder>
py::tuple reordered_typed(const py::list& arrays, Reorder reorder) {
  std::vector<Core<T>> cores = cores_from_numpy<T>(arrays);
  std::vector<Spectrum> spectra;
  {
    py::gil_scoped_release release;
    spectra = reorder(cores);
  }
  py::list out_cores, out_spectra;
  for (Core<T>& c : cores) out_cores.append(core_to_numpy<T>(std::move(c)));
  for (const Spectrum& s : spectra) out_spectra.append(to_numpy(s));
  return py::make_tuple(out_cores, out_spectra);
}

// A Sweep of float32 or float64 data behind one Python class.
struct TypedSweep {
  std::unique_ptr<Sweep<float>> single;
  std::unique_ptr<Sweep<double>> full;
  template <class F>
  auto run(F&& body) {
    return single ? body(*single) : body(*full);
  }
};

template <class T>
std::unique_ptr<Sweep<T>> make_sweep(const py::array& matrix, const Factors& factors, const SweepShortcuts& shortcuts,
                                     double unit) {
  auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(matrix);
  if (!a) throw py::type_error("Sweep: expected a numeric array");
  py::gil_scoped_release release;  // the array is read; only C++ state from here on
  return std::make_unique<Sweep<T>>(a.data(), a.shape(0), a.shape(1), factors, shortcuts, unit);
}

}  // namespace

void register_decompose(py::module_& m) {
  // Budget mode's scorer (include/mpo/sweep.hpp), in the data's precision so that its zero rule is
  // the one decompose() applies to the same data.
  py::class_<TypedSweep>(m, "Sweep",
                         "Algorithm 1 under any per-bond max_bond, scored exactly, splits cached by prefix.")
      .def(py::init([](const py::array& matrix, const std::vector<Index>& in_shape,
                       const std::vector<Index>& out_shape, double unit, bool values_only, bool reuse_bound,
                       bool kept_vectors, bool shared_rows, bool float32_gram, bool right_from_gram) {
             if (matrix.ndim() != 2)
               throw py::value_error("Sweep: expected a 2-D array, got " + std::to_string(matrix.ndim()) +
                                     " dimensions");
             const Factors factors{in_shape, out_shape};
             SweepShortcuts shortcuts;
             shortcuts.values_only = values_only;
             shortcuts.reuse_bound = reuse_bound;
             shortcuts.kept_vectors = kept_vectors;
             shortcuts.shared_rows = shared_rows;
             shortcuts.float32_gram = float32_gram;
             shortcuts.right_from_gram = right_from_gram;
             auto sweep = std::make_unique<TypedSweep>();
             if (py::isinstance<py::array_t<float>>(matrix)) {
               sweep->single = make_sweep<float>(matrix, factors, shortcuts, unit);
             } else if (py::isinstance<py::array_t<double>>(matrix)) {
               sweep->full = make_sweep<double>(matrix, factors, shortcuts, unit);
             } else {
               throw py::type_error("Sweep: expected float32 or float64, got " + dtype_name(matrix));
             }
             return sweep;
           }),
           py::arg("matrix"), py::arg("in_shape"), py::arg("out_shape"), py::kw_only(), py::arg("unit") = 1.0,
           py::arg("values_only") = true, py::arg("reuse_bound") = true, py::arg("kept_vectors") = true,
           py::arg("shared_rows") = true, py::arg("float32_gram") = true, py::arg("right_from_gram") = true)
      .def_property_readonly(
          "shortcuts_taken",
          [](TypedSweep& s) {
            const SweepShortcutCounts c = s.run([](auto& x) { return x.shortcuts_taken(); });
            py::dict out;
            out["values_only"] = c.values_only;
            out["reuse_bound"] = c.reuse_bound;
            out["reuse_vectors"] = c.reuse_vectors;
            out["kept_vectors"] = c.kept_vectors;
            out["shared_rows"] = c.shared_rows;
            out["float32_gram"] = c.float32_gram;
            out["right_from_gram"] = c.right_from_gram;
            out["float32_gram_in_double"] = c.float32_gram_in_double;
            return out;
          },
          "How often each shortcut (SweepShortcuts, include/mpo/sweep.hpp) was taken.")
      .def_property_readonly(
          "steps", [](TypedSweep& s) { return s.run([](auto& x) { return x.steps(); }); },
          "Bonds in the order the sweep cuts them.")
      .def_property_readonly(
          "energy", [](TypedSweep& s) { return s.run([](auto& x) { return x.energy(); }); },
          "||M||_F^2 of the swept matrix.")
      .def_property_readonly(
          "work", [](TypedSweep& s) { return s.run([](auto& x) { return x.work(); }); },
          "Multiply-adds of the Gram matrices of the splits made so far.")
      .def(
          "evaluate",
          [](TypedSweep& s, const std::vector<Index>& max_bond) {
            double squared_error = 0;
            std::vector<Index> bonds;
            {
              py::gil_scoped_release release;
              bonds = s.run([&](auto& x) { return x.evaluate(max_bond, &squared_error); });
            }
            return py::make_tuple(bonds, squared_error);
          },
          py::arg("max_bond"),
          "(kept bonds by bond index, exact squared error ||M - MPO||_F^2) of the sweep; 0 = uncapped.")
      .def(
          "build",
          [](TypedSweep& s, const std::vector<Index>& max_bond) {
            return s.run([&](auto& x) {
              using T = typename std::decay_t<decltype(x)>::value_type;
              Decomposition<T> d;
              {
                py::gil_scoped_release release;
                d = x.build(max_bond);
              }
              return decomposition_dict<T>(std::move(d));
            });
          },
          py::arg("max_bond"), "The sweep's MPO with these max_bond entries, as a decompose() dict.")
      .def(
          "forget_all_but",
          [](TypedSweep& s, const std::vector<Index>& max_bond) {
            py::gil_scoped_release release;
            s.run([&](auto& x) {
              x.forget_all_but(max_bond);
              return 0;
            });
          },
          py::arg("max_bond"), "Drop the cached splits off the path of max_bond.")
      .def(
          "last_left_rows",
          [](TypedSweep& s, const std::vector<Index>& max_bond) {
            return s.run([&](auto& x) {
              using T = typename std::decay_t<decltype(x)>::value_type;
              const Matrix<T>* rows = nullptr;
              {
                py::gil_scoped_release release;
                rows = &x.last_left_rows(max_bond);
              }
              // A copy: the cached split may be dropped by a later forget_all_but.
              py::array_t<T> out({static_cast<py::ssize_t>(rows->rows()), static_cast<py::ssize_t>(rows->cols())});
              std::copy(rows->data(), rows->data() + rows->size(), out.mutable_data());
              return py::array(out);
            });
          },
          py::arg("max_bond"),
          "R of the last left step's uncapped split on the path of max_bond (rows: candidates, descending).")
      .def(
          "last_left_count",
          [](TypedSweep& s, const std::vector<Index>& max_bond) {
            py::gil_scoped_release release;
            return s.run([&](auto& x) { return x.last_left_count(max_bond); });
          },
          py::arg("max_bond"), "How many rows last_left_rows(max_bond) has (nothing copied).")
      .def(
          "central_reference",
          [](TypedSweep& s, const std::vector<Index>& max_bond, Index side, Index b, Index count) {
            Spectrum values;
            {
              py::gil_scoped_release release;
              values = s.run([&](auto& x) { return x.central_reference(max_bond, side, b, count); });
            }
            return to_numpy(values);
          },
          py::arg("max_bond"), py::arg("side"), py::arg("b"), py::arg("count") = 0,
          "Make b the central-pair bound's reference; the count (0 = all) largest eigenvalues of G(b), "
          "descending.")
      .def(
          "central_bound",
          [](TypedSweep& s, Index lo, Index hi, Index used) {
            Eigen::MatrixXd w;
            {
              py::gil_scoped_release release;
              w = s.run([&](auto& x) { return x.central_bound(lo, hi, used); });
            }
            py::array_t<double> out({static_cast<py::ssize_t>(w.rows()), static_cast<py::ssize_t>(w.cols())});
            Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
                out.mutable_data(), w.rows(), w.cols()) = w;
            return out;
          },
          py::arg("lo"), py::arg("hi"), py::arg("used"),
          "||X_a v_j||^2 for rows a in [lo, hi) and the reference's first `used` eigenvectors.")
      .def(
          "central_probe",
          [](TypedSweep& s, Index b) {
            Spectrum values;
            {
              py::gil_scoped_release release;
              values = s.run([&](auto& x) { return x.central_probe(b); });
            }
            return to_numpy(values);
          },
          py::arg("b"), "The eigenvalues of G(b), descending; the reference unchanged.");
  m.def(
      "decompose",
      [](const py::array& matrix, const std::vector<Index>& in_shape,
         const std::vector<Index>& out_shape, const std::vector<Index>& max_bond,
         bool allow_randomized, bool allow_block, bool allow_whole, bool allow_rescale,
         bool allow_float32_gram, bool allow_k_vector) {
        if (matrix.ndim() != 2)
          throw py::value_error("decompose: expected a 2-D array, got " + std::to_string(matrix.ndim()) +
                                " dimensions");
        DecomposeOptions options;
        options.max_bond = max_bond;
        options.allow_randomized = allow_randomized;
        options.shortcuts.block = allow_block;
        options.shortcuts.whole = allow_whole;
        options.shortcuts.rescale = allow_rescale;
        options.shortcuts.float32_gram = allow_float32_gram;
        options.shortcuts.k_vector = allow_k_vector;
        const Factors factors{in_shape, out_shape};
        if (py::isinstance<py::array_t<float>>(matrix)) return decompose_typed<float>(matrix, factors, options);
        if (py::isinstance<py::array_t<double>>(matrix)) return decompose_typed<double>(matrix, factors, options);
        throw py::type_error("decompose: expected float32 or float64, got " + dtype_name(matrix));
      },
      py::arg("matrix"), py::arg("in_shape"), py::arg("out_shape"), py::arg("max_bond"),
      py::arg("allow_randomized") = true, py::arg("allow_block") = true, py::arg("allow_whole") = true,
      py::arg("allow_rescale") = true, py::arg("allow_float32_gram") = true, py::arg("allow_k_vector") = true,
      "Mixed-canonical MPO of a C-contiguous float32/float64 matrix; max_bond has n-1 caps, 0 = none.\n"
      "Returns a dict: cores, spectra, truncation_errors, cut, norm, randomized.\n"
      "The allow_* switches other than allow_randomized are for tests and diagnostics: each turns one\n"
      "shortcut of the sweep off (include/mpo/decompose.hpp, Shortcuts), giving the plain route:\n"
      "allow_block=False makes every left step from the interleaved copy; allow_whole=False splits the\n"
      "outer steps a cap leaves whole instead of taking the identity; allow_rescale=False decomposes data\n"
      "far from unit scale unscaled; allow_float32_gram=False forms every Gram matrix in double;\n"
      "allow_k_vector=False computes every eigenvector of a capped split's Gram matrix.");
  m.def(
      "canonicalize",
      [](const py::list& cores, const std::string& dtype) {
        return dispatch_dtype(dtype, "canonicalize", [&](auto tag) {
          using T = decltype(tag);
          return reordered_typed<T>(cores, [](std::vector<Core<T>>& c) { return canonicalize<T>(c); });
        });
      },
      py::arg("cores"), py::arg("dtype"),
      "Exact mixed canonical form of cores (central index (n-1)//2); returns (cores, spectra).");
  m.def(
      "order_bonds",
      [](const py::list& cores, const std::string& dtype) {
        return dispatch_dtype(dtype, "order_bonds", [&](auto tag) {
          using T = decltype(tag);
          return reordered_typed<T>(cores, [](std::vector<Core<T>>& c) { return order_bonds<T>(c); });
        });
      },
      py::arg("cores"), py::arg("dtype"),
      "Canonical form of cores already in mixed canonical form (left of the central core left-orthonormal,\n"
      "right of it right-orthonormal; not checked): each bond rotated; returns (cores, spectra).");
  m.def(
      "symmetric_eigen",
      [](const py::array_t<double, py::array::c_style | py::array::forcecast>& a, Index count,
         const std::string& route) -> py::object {
        if (a.ndim() != 2 || a.shape(0) != a.shape(1))
          throw py::value_error("symmetric_eigen: expected a square 2-D array");
        static const char* names[] = {"full", "partial", "jacobi"};
        int chosen = -1;
        for (int r = 0; r < 3; ++r)
          if (route == names[r]) chosen = r;
        if (chosen < 0 && route != "auto")
          throw py::value_error("symmetric_eigen: route must be 'auto', 'full', 'partial' or 'jacobi', got '" +
                                route + "'");
        // The row-major array read as column-major is its transpose: the core reads that one's lower
        // triangle, i.e. the upper triangle of the array as NumPy stores it.
        const Eigen::MatrixXd matrix = Eigen::Map<const Eigen::MatrixXd>(a.data(), a.shape(0), a.shape(1));
        SymmetricEigen result;
        bool solved = true;
        {
          py::gil_scoped_release release;
          if (chosen < 0) {
            result = symmetric_eigen(matrix, count);
          } else {
            solved = symmetric_eigen_route(matrix, count, static_cast<EigenRoute>(chosen), &result);
          }
        }
        // Python objects (even None) only once the GIL is back: the sanitizer stage's debug build found
        // py::none() made inside the released block (pybind11's inc_ref GIL check).
        if (!solved) return py::none();
        Matrix<double> vectors = result.vectors;  // row-major for NumPy
        const std::vector<py::ssize_t> shape{vectors.rows(), vectors.cols()};
        return py::make_tuple(to_numpy(result.values), to_numpy<double>(std::move(vectors), shape),
                              names[static_cast<int>(result.route)]);
      },
      py::arg("a"), py::arg("count"), py::arg("route") = "auto",
      "Eigenpairs of a symmetric matrix (its upper triangle as stored is read): (the `count` largest\n"
      "eigenvalues descending, their eigenvectors as columns, the route that produced them). route\n"
      "'full', 'partial' or 'jacobi' forces one route and returns None when it fails (the full solver\n"
      "does not converge, or the partial route's checks reject its result). For tests and benchmarks.");
}

}  // namespace mpo::bindings
