/// @file convert.hpp
/// @brief LoRA files rewritten without a model: kohya <-> diffusers / PEFT layout conversion (factors and alphas
/// unchanged, metadata carried over where it maps), and rank reduction by a truncated SVD of each layer's delta.
/// Include this header directly.
#pragma once

#include <algorithm>  // std::min
#include <cmath>      // std::sqrt
#include <map>        // std::map
#include <optional>   // std::optional
#include <set>        // std::set
#include <string>     // std::string
#include <vector>     // std::vector

#include <Eigen/Dense>  // Eigen::MatrixXd, Eigen::JacobiSVD

#include <sdlora/core/dtype.hpp>   // DType
#include <sdlora/core/error.hpp>   // ConfigError
#include <sdlora/core/tensor.hpp>  // Tensor
#include <sdlora/lora/format.hpp>  // LoraFile, LoraEntry, read_lora, save_kohya, save_peft

namespace sdlora::lora {

/// Metadata of `file` that means the same in the `to` layout: everything except what the writer of that layout
/// computes from the entries (kohya: ss_network_dim / ss_network_alpha / ss_network_args / ss_network_module;
/// PEFT: lora_adapter_metadata). sd-scripts' other ss_* strings travel through a PEFT file unchanged, so a
/// kohya -> PEFT -> kohya round trip keeps them.
inline std::map<std::string, std::string> carried_metadata(LoraFile const& file, LoraFormat to) {
  static std::set<std::string> const kComputed = {"ss_network_dim", "ss_network_alpha", "ss_network_args",
                                                  "ss_network_module", "lora_adapter_metadata"};
  std::map<std::string, std::string> out;
  for (auto const& [k, v] : file.metadata)
    if (!kComputed.count(k)) out[k] = v;
  (void)to;
  return out;
}

/// Options of save_lora.
struct SaveLoraOptions {
  std::optional<DType> dtype;  ///< storage of the factors; absent: each entry's own
  std::map<std::string, std::string> metadata;  ///< extra metadata (overrides carried keys)
};

/// Writes `file` in `layout`, carrying its metadata over (carried_metadata). kohya's ss_base_model_version is taken
/// from the file when it has one.
inline void save_lora(std::string const& path, LoraFile const& file, LoraFormat layout, SaveLoraOptions const& o = {}) {
  auto meta = carried_metadata(file, layout);
  for (auto const& [k, v] : o.metadata) meta[k] = v;
  if (layout == LoraFormat::Kohya) {
    KohyaSaveOptions ko;
    ko.dtype = o.dtype;
    if (auto it = meta.find("ss_base_model_version"); it != meta.end()) ko.base_model_version = it->second;
    for (auto const& e : file.entries) ko.sdxl_text_encoders = ko.sdxl_text_encoders || e.component == "text_encoder_2";
    ko.metadata = std::move(meta);
    save_kohya(path, file, ko);
  } else {
    PeftSaveOptions po;
    po.dtype = o.dtype;
    po.metadata = std::move(meta);
    save_peft(path, file, po);
  }
}

/// Reads a LoRA file of either layout and writes it in `to`: the same factors (in their stored dtype unless
/// `o.dtype`) and alphas. Kohya names are turned into dotted module names by guess_dotted() (no model needed);
/// kohya files with LDM UNet names (input_blocks_...) come out with diffusers names (read with `layout`).
/// Returns what was read.
inline LoraFile convert_lora(std::string const& in, LoraFormat to, std::string const& out,
                             SaveLoraOptions const& o = {}, UnetLayout const& layout = {}) {
  LoraFile file = read_lora(in, layout);
  if (!file.unknown_keys.empty()) {
    std::string list;
    for (std::size_t i = 0; i < file.unknown_keys.size() && i < 5; ++i) list += (i ? ", '" : "'") + file.unknown_keys[i] + "'";
    SDLORA_THROW(FormatError, "[lora.convert] " << in << ": " << file.unknown_keys.size()
                                                << " key(s) of no supported LoRA layout would be lost: " << list);
  }
  save_lora(out, file, to, o);
  return file;
}

namespace detail {
/// A factor as a row-major (rows, numel / rows) double matrix.
inline Eigen::MatrixXd as_matrix(Tensor<float> const& t, Index rows) {
  Index const cols = t.numel() / rows;
  Eigen::MatrixXd m(rows, cols);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) m(i, j) = double(t(i * cols + j));
  return m;
}
/// A double matrix into a float tensor of `shape` (row-major).
inline Tensor<float> to_tensor(Eigen::MatrixXd const& m, Shape const& shape) {
  Tensor<float> t = Tensor<float>::uninitialized(shape);
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) t(i * m.cols() + j) = float(m(i, j));
  return t;
}
/// The factor shapes of an entry of `rank`, like `e`'s (conv: down (r, in, kh, kw), up (out, r, 1, 1)).
inline std::pair<Shape, Shape> factor_shapes(LoraEntry const& e, Index rank) {
  std::vector<Index> d(e.down.shape().begin(), e.down.shape().end()), u(e.up.shape().begin(), e.up.shape().end());
  d[0] = rank;
  u[1] = rank;
  return {Shape(d), Shape(u)};
}
}  // namespace detail

/// What resize_lora did to one layer.
struct ResizedLayer {
  std::string key;
  Index rank_before = 0, rank_after = 0;
  double kept_energy = 1;  ///< sum of kept sigma^2 / sum of all sigma^2 (1 when nothing was cut)
};

/// Reduces every entry to rank <= `rank`: the delta scale * up @ down (conv factors flattened to (out, r) and
/// (r, in * kh * kw)) is factored by an SVD (through the QR of each factor, so only an (r, r) matrix is decomposed,
/// in double) and truncated to its `rank` largest singular values, split evenly (sqrt(S)) between the new factors.
/// alpha is set to old_scale * new_rank, so the effective delta new_alpha / new_rank * up' @ down' is the best
/// rank-`rank` approximation of the old one (Eckart-Young). Entries already at rank <= `rank` are re-factored at
/// their own rank (the same delta). LyCORIS (LoHa / LoKr) layers are refused. `report` (optional) receives one line
/// per layer.
inline LoraFile resize_lora(LoraFile const& file, Index rank, std::vector<ResizedLayer>* report = nullptr) {
  if (rank < 1) SDLORA_THROW(ConfigError, "[lora.resize] the rank must be at least 1, got " << rank);
  LoraFile out = file;
  for (auto& e : out.entries) {
    if (e.lycoris)
      SDLORA_THROW(FormatError, "[lora.resize] " << file.path << ": '" << e.key << "' is a LyCORIS "
                                                 << lycoris_algo_name(e.lycoris->algo)
                                                 << " layer; only LoRA (lora_down / lora_up) layers can be resized");
    Index const r = e.rank(), rows = e.up.dim(0);
    double const scale = e.scale(1.0);
    Eigen::MatrixXd const B = detail::as_matrix(e.up, rows);  // (out, r)
    Eigen::MatrixXd const A = detail::as_matrix(e.down, r);   // (r, fan)
    // delta / scale = B A = Qb (Rb Ra^T) Qa^T with B = Qb Rb, A^T = Qa Ra (thin QR); SVD of the small middle.
    Eigen::HouseholderQR<Eigen::MatrixXd> qb(B), qa(A.transpose());
    Index const kb = std::min(rows, r), ka = std::min(A.cols(), r);
    Eigen::MatrixXd const Qb = qb.householderQ() * Eigen::MatrixXd::Identity(rows, kb);
    Eigen::MatrixXd const Qa = qa.householderQ() * Eigen::MatrixXd::Identity(A.cols(), ka);
    Eigen::MatrixXd const Rb = qb.matrixQR().topRows(kb).triangularView<Eigen::Upper>();
    Eigen::MatrixXd const Ra = qa.matrixQR().topRows(ka).triangularView<Eigen::Upper>();
    Eigen::MatrixXd const M = Rb * Ra.transpose();  // (kb, ka)
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(M, Eigen::ComputeThinU | Eigen::ComputeThinV);
    Index const k = std::min<Index>(rank, svd.singularValues().size());
    Eigen::VectorXd const s = svd.singularValues();
    Eigen::VectorXd const root = s.head(k).cwiseSqrt();
    Eigen::MatrixXd const up = (Qb * svd.matrixU().leftCols(k)) * root.asDiagonal();               // (out, k)
    Eigen::MatrixXd const down = root.asDiagonal() * (Qa * svd.matrixV().leftCols(k)).transpose();  // (k, fan)
    auto const [down_shape, up_shape] = detail::factor_shapes(e, k);
    ResizedLayer line{e.key, r, k, 1};
    double const total = s.squaredNorm();
    if (total > 0) line.kept_energy = s.head(k).squaredNorm() / total;
    e.down = detail::to_tensor(down, down_shape);
    e.up = detail::to_tensor(up, up_shape);
    e.alpha = scale * double(k);
    e.has_alpha = true;
    e.rslora = false;
    if (report) report->push_back(line);
  }
  return out;
}

}  // namespace sdlora::lora
