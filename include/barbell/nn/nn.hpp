// barbell::nn: modules and the GPT.
#pragma once

#include "barbell/nn/gpt.hpp"
#include "barbell/nn/layers.hpp"
#include "barbell/nn/module.hpp"
