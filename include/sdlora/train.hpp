/// @file train.hpp
/// @brief The umbrella header for the model-independent training machinery: parameter lists, optimizers (AdamW, SGD,
/// Adafactor), LR schedules, gradient clipping, losses, checkpointed training state and progress reporting.
/// Include it after (or instead of) <sdlora/sdlora.hpp>. Library headers never include it.
#pragma once

#include <sdlora/train/grad_clip.hpp>
#include <sdlora/train/loss.hpp>
#include <sdlora/train/interrupt.hpp>
#include <sdlora/train/lr_schedule.hpp>
#include <sdlora/train/non_finite.hpp>
#include <sdlora/train/optimizer.hpp>
#include <sdlora/train/param_ref.hpp>
#include <sdlora/train/progress.hpp>
#include <sdlora/train/state.hpp>
#include <sdlora/train/bucketing.hpp>
#include <sdlora/train/dataset.hpp>
#include <sdlora/train/latent_cache.hpp>
#include <sdlora/train/sample_data.hpp>
