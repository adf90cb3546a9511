/// @file clip_text.hpp
/// @brief CLIPTextModel (transformers): token + position embeddings, a causal pre-LayerNorm transformer, the final
/// LayerNorm, pooled output at the first EOS token. Forward (any number of layers: clip skip, SD 2.x's
/// penultimate) and backward into LoRA factors and embedding rows (text-encoder LoRA, Textual Inversion).
/// Include <sdlora/models.hpp> instead.
#pragma once

#include <cstdint>  // std::int32_t
#include <string>   // std::string
#include <vector>   // std::vector

#include <sdlora/models/config.hpp>  // ClipTextConfig
#include <sdlora/nn/attention.hpp>   // nn::ClipAttention
#include <sdlora/nn/embedding.hpp>   // nn::Embedding
#include <sdlora/nn/gelu.hpp>        // nn::Gelu, nn::QuickGelu
#include <sdlora/nn/layer_norm.hpp>  // nn::LayerNorm
#include <sdlora/nn/linear.hpp>      // nn::Linear
#include <sdlora/ops/elementwise.hpp>  // ops::add, ops::axpy

namespace sdlora::models {

using nn::Mode;

/// CLIPMLP: fc2(act(fc1(x))) with act = quick_gelu (SD 1.x) or gelu (SD 2.x).
template <class T, class B = Cpu>
class ClipMlp {
 public:
  ClipMlp() = default;
  ClipMlp(Index hidden, Index intermediate, bool quick_gelu)
      : fc1(hidden, intermediate), fc2(intermediate, hidden), quick_(quick_gelu) {}
  nn::Linear<T, B> fc1;
  nn::Linear<T, B> fc2;

  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode) {
    auto h = fc1.forward(ctx, x, mode);
    h = quick_ ? quick_gelu_.forward(ctx, h.view(), mode) : gelu_.forward(ctx, h.view(), mode);
    return fc2.forward(ctx, h.view(), mode);
  }
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    auto g = fc2.backward(ctx, dy);
    g = quick_ ? quick_gelu_.backward(ctx, g.view()) : gelu_.backward(ctx, g.view());
    return fc1.backward(ctx, g.view());
  }
  template <class V>
  void visit(std::string const& name, V&& visitor) {
    fc1.visit(nn::join(name, "fc1"), visitor);
    fc2.visit(nn::join(name, "fc2"), visitor);
  }

 private:
  bool quick_ = true;
  nn::QuickGelu<T, B> quick_gelu_;
  nn::Gelu<T, B> gelu_;
};

/// CLIPEncoderLayer: x += self_attn(layer_norm1(x)); x += mlp(layer_norm2(x)).
template <class T, class B = Cpu>
class ClipEncoderLayer {
 public:
  ClipEncoderLayer() = default;
  explicit ClipEncoderLayer(ClipTextConfig const& c)
      : layer_norm1(c.hidden_size, c.layer_norm_eps),
        self_attn(c.hidden_size, c.num_attention_heads, true),
        layer_norm2(c.hidden_size, c.layer_norm_eps),
        mlp(c.hidden_size, c.intermediate_size, c.hidden_act == "quick_gelu") {}
  nn::LayerNorm<T, B> layer_norm1;
  nn::ClipAttention<T, B> self_attn;
  nn::LayerNorm<T, B> layer_norm2;
  ClipMlp<T, B> mlp;

  Tensor<T, B> forward(Context<B>& ctx, TensorView<T const, B> x, Mode mode) {
    auto h = layer_norm1.forward(ctx, x, mode);
    auto y = self_attn.forward(ctx, h.view(), mode);
    ops::add<T, B>(ctx, y.view(), y.view(), x);  // (N, L, C)
    h = layer_norm2.forward(ctx, y.view(), mode);
    h = mlp.forward(ctx, h.view(), mode);
    ops::add<T, B>(ctx, y.view(), y.view(), h.view());
    return y;
  }
  Tensor<T, B> backward(Context<B>& ctx, TensorView<T const, B> dy) {
    auto dx = Tensor<T, B>::from_view(dy);
    auto g = mlp.backward(ctx, dy);
    g = layer_norm2.backward(ctx, g.view());
    ops::axpy<T, B>(ctx, dx.view(), 1.0, g.view());
    g = self_attn.backward(ctx, dx.view());
    g = layer_norm1.backward(ctx, g.view());
    ops::axpy<T, B>(ctx, dx.view(), 1.0, g.view());
    return dx;
  }
  template <class V>
  void visit(std::string const& name, V&& visitor) {
    layer_norm1.visit(nn::join(name, "layer_norm1"), visitor);
    self_attn.visit(nn::join(name, "self_attn"), visitor);
    layer_norm2.visit(nn::join(name, "layer_norm2"), visitor);
    mlp.visit(nn::join(name, "mlp"), visitor);
  }
};

/// The outputs SD pipelines use.
template <class T, class B>
struct ClipTextOutput {
  Tensor<T, B> last_hidden_state;  // (N, L, C): final_layer_norm of the last run layer's output
  Tensor<T, B> pooler_output;      // (N, C): last_hidden_state at each sequence's first EOS token
  Tensor<T, B> text_embeds;        // (N, projection_dim): text_projection(pooler_output), with a projection only
};

/// What SDXL's prompt encoding reads: an inner layer's output and the pooled output of the whole model.
template <class T, class B>
struct ClipHiddenAndPooled {
  Tensor<T, B> hidden;  // (N, L, C): hidden_states[-(clip_skip + 2)], no final LayerNorm (the penultimate layer)
  Tensor<T, B> pooled;  // (N, projection_dim) text_embeds with a projection, else (N, C) pooler_output
};

/// reference: transformers/models/clip/modeling_clip.py, CLIPTextModel. Parameters are named as in transformers
/// 4 checkpoints ("text_model.embeddings.token_embedding.weight", ...).
template <class T, class B = Cpu>
class ClipTextModel {
  ClipTextConfig config_;  // first: the members below are built from it

 public:
  ClipTextModel() = default;
  explicit ClipTextModel(ClipTextConfig config)
      : config_(std::move(config)),
        token_embedding(config_.vocab_size, config_.hidden_size),
        position_embedding(config_.max_position_embeddings, config_.hidden_size),
        final_layer_norm(config_.hidden_size, config_.layer_norm_eps) {
    for (int i = 0; i < config_.num_hidden_layers; ++i) layers.emplace_back(config_);
    if (config_.with_projection) text_projection = nn::Linear<T, B>(config_.hidden_size, config_.projection_dim, false);
  }
  ClipTextConfig const& config() const { return config_; }

  nn::Embedding<T, B> token_embedding;     // text_model.embeddings.token_embedding
  nn::Embedding<T, B> position_embedding;  // text_model.embeddings.position_embedding
  std::vector<ClipEncoderLayer<T, B>> layers;  // text_model.encoder.layers.N
  nn::LayerNorm<T, B> final_layer_norm;        // text_model.final_layer_norm
  nn::Linear<T, B> text_projection;            // text_projection (CLIPTextModelWithProjection only), no bias

  /// Appends `count` rows to the token embedding (Textual Inversion: new tokens), initialised to copies of row
  /// `init_row`; returns the id of the first new row.
  Index add_tokens(Index count, Index init_row) {
    Index const old = token_embedding.num_embeddings(), dim = config_.hidden_size;
    SDLORA_EXPECTS(0 <= init_row && init_row < old, "[clip_text.add_tokens] init row " << init_row
                                                                                        << " outside the vocabulary");
    Tensor<T, B> w(Shape{old + count, dim});
    BackendMemory<B>::copy(w.data(), token_embedding.weight.value.data(), token_embedding.weight.value.bytes());
    for (Index r = 0; r < count; ++r)
      BackendMemory<B>::copy(w.data() + (old + r) * dim, token_embedding.weight.value.data() + init_row * dim,
                             std::size_t(dim) * sizeof(T));
    bool const trainable = token_embedding.weight.trainable;
    token_embedding.weight.value = std::move(w);
    token_embedding.weight.set_trainable(trainable);
    config_.vocab_size = int(old + count);
    return old;
  }

  /// The hidden state after `num_layers` encoder layers (no final LayerNorm); 0 = the embeddings.
  Tensor<T, B> hidden_state(Context<B>& ctx, Tensor<std::int32_t, Cpu> const& ids, int num_layers,
                            Mode mode = Mode::Infer) {
    SDLORA_EXPECTS(ids.rank() == 2 && ids.dim(1) <= config_.max_position_embeddings,
                   "[clip_text] ids must be (N, L <= " << config_.max_position_embeddings << "), got " << ids.shape());
    SDLORA_EXPECTS(0 <= num_layers && num_layers <= int(layers.size()),
                   "[clip_text] cannot run " << num_layers << " of " << layers.size() << " layers");
    for (Index i = 0; i < ids.numel(); ++i)
      SDLORA_EXPECTS(0 <= ids(i) && ids(i) < token_embedding.num_embeddings(),
                     "[clip_text] token id " << ids(i) << " outside the vocabulary of "
                                             << token_embedding.num_embeddings());
    Index const n = ids.dim(0), l = ids.dim(1), c = config_.hidden_size;
    auto h = token_embedding.forward(ctx, ids, mode);  // (N, L, C)
    std::vector<std::int32_t> positions;
    for (Index b = 0; b < n; ++b)
      for (Index p = 0; p < l; ++p) positions.push_back(std::int32_t(p));
    auto pos = position_embedding.forward(ctx, positions, mode);  // (N * L, C)
    ops::axpy<T, B>(ctx, h.view(), 1.0, pos.view().reshaped(Shape{n, l, c}));
    for (int i = 0; i < num_layers; ++i) h = layers[i].forward(ctx, h.view(), mode);
    layers_run_ = num_layers;
    return h;
  }

  /// last_hidden_state and pooled output (and text_embeds with a projection). clip_skip = k runs all but the last k
  /// layers (diffusers' clip_skip).
  ClipTextOutput<T, B> forward(Context<B>& ctx, Tensor<std::int32_t, Cpu> const& ids, Mode mode = Mode::Infer,
                               int clip_skip = 0) {
    auto h = hidden_state(ctx, ids, int(layers.size()) - clip_skip, mode);
    ClipTextOutput<T, B> out;
    out.last_hidden_state = final_layer_norm.forward(ctx, h.view(), mode);
    out.pooler_output = pool(ids, out.last_hidden_state);
    if (config_.with_projection) out.text_embeds = text_projection.forward(ctx, out.pooler_output.view(), mode);
    return out;
  }

  /// SDXL's use (diffusers' encode_prompt with output_hidden_states): the output of layer L - 1 - clip_skip
  /// (hidden_states[-(clip_skip + 2)], no final LayerNorm) and the pooled output of all L layers.
  ClipHiddenAndPooled<T, B> forward_hidden_and_pooled(Context<B>& ctx, Tensor<std::int32_t, Cpu> const& ids,
                                                      Mode mode = Mode::Infer, int clip_skip = 0) {
    int const total = int(layers.size()), keep = total - 1 - clip_skip;
    SDLORA_EXPECTS(keep >= 0, "[clip_text] clip_skip " << clip_skip << " leaves no layer of " << total);
    ClipHiddenAndPooled<T, B> out;
    out.hidden = hidden_state(ctx, ids, keep, mode);
    auto h = Tensor<T, B>(out.hidden);
    for (int i = keep; i < total; ++i) h = layers[i].forward(ctx, h.view(), mode);
    layers_run_ = total;
    hidden_layer_ = keep;
    auto last = final_layer_norm.forward(ctx, h.view(), mode);
    out.pooled = pool(ids, last);
    if (config_.with_projection) out.pooled = text_projection.forward(ctx, out.pooled.view(), mode);
    return out;
  }

  /// Backward of the last forward_hidden_and_pooled(Mode::Train) from d(hidden) (N, L, C) and, when not empty,
  /// d(pooled): accumulates the trainable parameters' gradients.
  void backward_hidden_and_pooled(Context<B>& ctx, TensorView<T const, B> dhidden, TensorView<T const, B> dpooled) {
    Index const c = config_.hidden_size;
    Tensor<T, B> g;
    if (!dpooled.empty()) {  // the layers above hidden_layer_ see only the pooled gradient
      auto dp = config_.with_projection ? text_projection.backward(ctx, dpooled) : Tensor<T, B>::from_view(dpooled);
      Tensor<T, B> dlast(dhidden.shape());  // zeros but at the pooled positions
      Index const l = dhidden.dim(1);
      for (std::size_t b = 0; b < eos_.size(); ++b)
        BackendMemory<B>::copy(dlast.data() + (Index(b) * l + eos_[b]) * c, dp.data() + Index(b) * c,
                               std::size_t(c) * sizeof(T));
      g = final_layer_norm.backward(ctx, dlast.view());
      for (int i = layers_run_; i-- > hidden_layer_;) g = layers[i].backward(ctx, g.view());
    } else {
      g = Tensor<T, B>(dhidden.shape());
    }
    ops::axpy<T, B>(ctx, g.view(), 1.0, dhidden);
    for (int i = hidden_layer_; i-- > 0;) g = layers[i].backward(ctx, g.view());
    token_embedding.backward(ctx, g.view());
    position_embedding.backward(ctx, g.view());
  }

  /// Backward from d(last_hidden_state) (N, L, C) of the last forward(Mode::Train): accumulates gradients of
  /// trainable parameters (LoRA factors, new embedding rows).
  void backward(Context<B>& ctx, TensorView<T const, B> dlast_hidden_state) {
    auto g = final_layer_norm.backward(ctx, dlast_hidden_state);
    backward_from_hidden(ctx, g.view());
  }
  /// Backward from the gradient of hidden_state(..., num_layers) (no final LayerNorm).
  void backward_from_hidden(Context<B>& ctx, TensorView<T const, B> dh) {
    auto g = Tensor<T, B>::from_view(dh);
    for (int i = layers_run_; i-- > 0;) g = layers[i].backward(ctx, g.view());
    token_embedding.backward(ctx, g.view());
    position_embedding.backward(ctx, g.view());
  }

  template <class V>
  void visit(std::string const& name, V&& visitor) {
    std::string const tm = nn::join(name, "text_model");
    token_embedding.visit(nn::join(tm, "embeddings.token_embedding"), visitor);
    position_embedding.visit(nn::join(tm, "embeddings.position_embedding"), visitor);
    for (std::size_t i = 0; i < layers.size(); ++i)
      layers[i].visit(nn::join(tm, "encoder.layers." + std::to_string(i)), visitor);
    final_layer_norm.visit(nn::join(tm, "final_layer_norm"), visitor);
    if (config_.with_projection) text_projection.visit(nn::join(name, "text_projection"), visitor);
  }

 private:
  /// (N, C) rows of `last` at each sequence's pooling position (kept in eos_ for backward): transformers' first
  /// EOS token, or the argmax of the ids when eos_token_id == 2 (the legacy configs: SD and SDXL checkpoints).
  Tensor<T, B> pool(Tensor<std::int32_t, Cpu> const& ids, Tensor<T, B> const& last) {
    Index const n = ids.dim(0), l = ids.dim(1), c = config_.hidden_size;
    Tensor<T, B> pooled(Shape{n, c});
    eos_.assign(std::size_t(n), 0);
    for (Index b = 0; b < n; ++b) {
      Index eos = 0;
      if (config_.eos_token_id == 2) {
        for (Index p = 0; p < l; ++p)
          if (ids.at({b, p}) > ids.at({b, eos})) eos = p;
      } else {
        while (eos < l - 1 && ids.at({b, eos}) != config_.eos_token_id) ++eos;
        if (ids.at({b, eos}) != config_.eos_token_id) eos = 0;
      }
      eos_[std::size_t(b)] = eos;
      BackendMemory<B>::copy(pooled.data() + b * c, last.data() + (b * l + eos) * c, std::size_t(c) * sizeof(T));
    }
    return pooled;
  }

  int layers_run_ = 0;
  int hidden_layer_ = 0;     // the layer forward_hidden_and_pooled returned the output of
  std::vector<Index> eos_;   // per sequence: the pooled position of the last forward
};

}  // namespace sdlora::models
