/// @file cpu.hpp
/// @brief The CPU backend alone: every op front end (ops/) with its CPU kernels (backend/cpu/), the `ops::Impl<Op,
/// Cpu>` specialisations that models, layers and LoRA code call. A program that runs anything on the CPU includes
/// this once, then only the headers of what it uses (models/checkpoint.hpp, pipeline/txt2img.hpp, io/image.hpp...),
/// instead of the umbrella <sdlora/sdlora.hpp>, which also brings the training machinery (docs/tutorials/library.md).
#pragma once

#include <sdlora/core/tensor.hpp>

#include <sdlora/ops/activation.hpp>
#include <sdlora/ops/attention.hpp>
#include <sdlora/ops/bias.hpp>
#include <sdlora/ops/concat.hpp>
#include <sdlora/ops/conv.hpp>
#include <sdlora/ops/dropout.hpp>
#include <sdlora/ops/elementwise.hpp>
#include <sdlora/ops/embedding.hpp>
#include <sdlora/ops/gelu.hpp>
#include <sdlora/ops/gemm.hpp>
#include <sdlora/ops/layout.hpp>
#include <sdlora/ops/norm.hpp>
#include <sdlora/ops/reduce.hpp>
#include <sdlora/ops/softmax.hpp>
#include <sdlora/ops/timestep.hpp>
#include <sdlora/ops/upsample.hpp>

#include <sdlora/backend/cpu/activation.hpp>
#include <sdlora/backend/cpu/attention.hpp>
#include <sdlora/backend/cpu/bias.hpp>
#include <sdlora/backend/cpu/concat.hpp>
#include <sdlora/backend/cpu/conv.hpp>
#include <sdlora/backend/cpu/dropout.hpp>
#include <sdlora/backend/cpu/elementwise.hpp>
#include <sdlora/backend/cpu/embedding.hpp>
#include <sdlora/backend/cpu/gelu.hpp>
#include <sdlora/backend/cpu/gemm.hpp>
#include <sdlora/backend/cpu/layout.hpp>
#include <sdlora/backend/cpu/norm.hpp>
#include <sdlora/backend/cpu/reduce.hpp>
#include <sdlora/backend/cpu/softmax.hpp>
#include <sdlora/backend/cpu/timestep.hpp>
#include <sdlora/backend/cpu/upsample.hpp>
