/// @file pipeline.hpp
/// @brief Umbrella header for generation: checkpoints, schedulers, LoRA files, txt2img / img2img.
#pragma once

#include <sdlora/sdlora.hpp>

#include <sdlora/lora/format.hpp>
#include <sdlora/models/checkpoint.hpp>
#include <sdlora/pipeline/checks.hpp>
#include <sdlora/pipeline/device.hpp>
#include <sdlora/pipeline/embeddings.hpp>
#include <sdlora/pipeline/lora.hpp>
#include <sdlora/pipeline/stages.hpp>
#include <sdlora/pipeline/txt2img.hpp>
#include <sdlora/schedulers/factory.hpp>
