/// @file sdlora.hpp
/// @brief The umbrella header for users of the CPU backend. Library headers never include it.
#pragma once

#include <sdlora/core/backend.hpp>
#include <sdlora/core/dtype.hpp>
#include <sdlora/core/error.hpp>
#include <sdlora/core/rng.hpp>
#include <sdlora/core/shape.hpp>
#include <sdlora/core/tensor.hpp>

#include <sdlora/ops/elementwise.hpp>
#include <sdlora/ops/gemm.hpp>
#include <sdlora/ops/reduce.hpp>

#include <sdlora/backend/cpu/elementwise.hpp>
#include <sdlora/backend/cpu/gemm.hpp>
#include <sdlora/backend/cpu/reduce.hpp>
#include <sdlora/ops/bias.hpp>
#include <sdlora/backend/cpu/bias.hpp>
#include <sdlora/ops/concat.hpp>
#include <sdlora/ops/layout.hpp>
#include <sdlora/backend/cpu/concat.hpp>
#include <sdlora/backend/cpu/layout.hpp>
#include <sdlora/ops/activation.hpp>
#include <sdlora/ops/conv.hpp>
#include <sdlora/ops/norm.hpp>
#include <sdlora/ops/timestep.hpp>
#include <sdlora/ops/upsample.hpp>
#include <sdlora/ops/softmax.hpp>
#include <sdlora/ops/attention.hpp>
#include <sdlora/ops/gelu.hpp>
#include <sdlora/ops/embedding.hpp>
#include <sdlora/ops/dropout.hpp>
#include <sdlora/backend/cpu/activation.hpp>
#include <sdlora/backend/cpu/conv.hpp>
#include <sdlora/backend/cpu/norm.hpp>
#include <sdlora/backend/cpu/timestep.hpp>
#include <sdlora/backend/cpu/upsample.hpp>

#include <sdlora/backend/cpu/softmax.hpp>
#include <sdlora/backend/cpu/attention.hpp>
#include <sdlora/backend/cpu/gelu.hpp>
#include <sdlora/backend/cpu/embedding.hpp>
#include <sdlora/backend/cpu/dropout.hpp>

#include <sdlora/nn/module.hpp>
#include <sdlora/nn/linear.hpp>
#include <sdlora/nn/activation.hpp>
#include <sdlora/nn/conv2d.hpp>
#include <sdlora/nn/downsample.hpp>
#include <sdlora/nn/group_norm.hpp>
#include <sdlora/nn/layer_norm.hpp>
#include <sdlora/nn/timestep_embedding.hpp>
#include <sdlora/nn/upsample.hpp>

#include <sdlora/nn/gelu.hpp>
#include <sdlora/nn/dropout.hpp>
#include <sdlora/nn/embedding.hpp>
#include <sdlora/nn/attention.hpp>
#include <sdlora/nn/feed_forward.hpp>
#include <sdlora/nn/storage.hpp>

#include <sdlora/io/safetensors.hpp>
#include <sdlora/io/npy.hpp>
#include <sdlora/io/image.hpp>

#include <sdlora/lora/adapter.hpp>
#include <sdlora/lora/linear.hpp>
#include <sdlora/lora/conv.hpp>
#include <sdlora/lora/inject.hpp>
#include <sdlora/lora/names.hpp>
#include <sdlora/lora/format.hpp>

#include <sdlora/tokenizer/clip_tokenizer.hpp>

#include <sdlora/train.hpp>

#include <sdlora/schedulers/config.hpp>
#include <sdlora/schedulers/numerics.hpp>
#include <sdlora/schedulers/scheduler.hpp>
#include <sdlora/schedulers/ddpm.hpp>
#include <sdlora/schedulers/pndm.hpp>
#include <sdlora/schedulers/euler.hpp>
#include <sdlora/schedulers/dpm_solver.hpp>
#include <sdlora/schedulers/factory.hpp>
