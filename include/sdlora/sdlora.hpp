/// @file sdlora.hpp
/// @brief The umbrella header for users of the CPU backend. Library headers never include it.
#pragma once

#include <sdlora/core/backend.hpp>
#include <sdlora/core/dtype.hpp>
#include <sdlora/core/error.hpp>
#include <sdlora/core/rng.hpp>
#include <sdlora/core/shape.hpp>
#include <sdlora/core/tensor.hpp>

#include <sdlora/backend/cpu.hpp>  // every op with its CPU kernels

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
