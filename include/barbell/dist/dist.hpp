// Data-parallel training: process groups and how ranks start, DataParallel, ZeRO-1
// AdamW, and the distributed token sampler. See docs/distributed.md.
#pragma once

#include "barbell/dist/data.hpp"
#include "barbell/dist/data_parallel.hpp"
#include "barbell/dist/init.hpp"
#include "barbell/dist/process_group.hpp"
#include "barbell/dist/zero.hpp"
