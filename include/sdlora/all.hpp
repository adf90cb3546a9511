/// @file all.hpp
/// @brief Everything: the CPU library (<sdlora/sdlora.hpp>), checkpoints and generation (<sdlora/pipeline.hpp>) and
/// whole training runs (<sdlora/train/run.hpp>). The example programs include this.
#pragma once

#include <sdlora/pipeline.hpp>
#include <sdlora/sdlora.hpp>
#include <sdlora/train.hpp>
#include <sdlora/train/run.hpp>
#include <sdlora/train/trainer.hpp>
