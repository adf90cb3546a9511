/// @file eval.hpp
/// @brief Umbrella header for evaluation: the CLIP and DINO encoders as transformers folders, their image
/// preprocessing, the metrics (CLIP score, CLIP-I, DINO, SSIM) and the toy world's pixel measures. Library headers
/// never include it.
#pragma once

#include <sdlora/sdlora.hpp>

#include <sdlora/eval/encoders.hpp>
#include <sdlora/eval/metrics.hpp>
#include <sdlora/eval/plot.hpp>
#include <sdlora/eval/preprocess.hpp>
#include <sdlora/eval/toy_measures.hpp>
#include <sdlora/models/clip_vision.hpp>
#include <sdlora/models/vit.hpp>
