// The umbrella header: everything a program that uses barbell needs.
#pragma once

#include "barbell/config.hpp"
#include "barbell/core/device.hpp"
#include "barbell/core/dtype.hpp"
#include "barbell/core/error.hpp"
#include "barbell/core/parallel.hpp"
#include "barbell/core/random.hpp"
#include "barbell/core/shape.hpp"
#include "barbell/core/tensor.hpp"
#include "barbell/autograd/autograd.hpp"
#include "barbell/ops/ops.hpp"
#include "barbell/nn/nn.hpp"
#include "barbell/optim/optim.hpp"
#include "barbell/io/addition.hpp"
#include "barbell/io/data.hpp"
#include "barbell/io/safetensors.hpp"
#include "barbell/io/tokenizer.hpp"
