// parse_json_bounded: nlohmann's parser with limits on nesting depth, keys per object and
// elements per array enforced while it parses, and duplicate keys refused, for JSON that
// comes from a file (safetensors headers, their metadata).
#pragma once

#include <cstddef>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "barbell/core/error.hpp"

namespace barbell::io::detail {

struct JsonLimits {
  size_t max_depth = 8;        // open objects and arrays at once
  size_t max_keys = 1u << 18;  // keys in one object
  size_t max_elements = 64;    // elements in one array
};

// Parses `text` into Json (nlohmann::json or ordered_json). The parser itself is
// iterative, but a DOM nested 100,000 deep is not: copying, comparing or printing it
// recurses and overflows the stack. So the depth is checked at every open bracket,
// before the value exists, and a file can never build one. Every failure, the JSON
// library's included, throws IOError("<what>: <reason>"). `root_keys`, when given, gets
// the root object's keys in the order of the text.
template <typename Json>
Json parse_json_bounded(const std::string& text, const JsonLimits& lim, const std::string& what,
                        std::vector<std::string>* root_keys = nullptr) {
  struct Frame {
    bool object = false;
    size_t count = 0;
    std::set<std::string> keys;
  };
  std::vector<Frame> frames;
  auto fail = [&](const std::string& why) { return IOError(fmt::format("{}: {}", what, why)); };
  auto add_element = [&]() {
    if (frames.empty() || frames.back().object) return;
    if (++frames.back().count > lim.max_elements)
      throw fail(fmt::format("an array has more than {} elements", lim.max_elements));
  };
  auto cb = [&](int /*depth*/, typename Json::parse_event_t ev, Json& parsed) -> bool {
    using E = typename Json::parse_event_t;
    switch (ev) {
      case E::object_start:
      case E::array_start:
        add_element();
        if (frames.size() >= lim.max_depth)
          throw fail(fmt::format("nested deeper than {} levels of objects and arrays", lim.max_depth));
        frames.emplace_back();
        frames.back().object = ev == E::object_start;
        break;
      case E::object_end:
      case E::array_end:
        if (!frames.empty()) frames.pop_back();
        break;
      case E::key: {
        if (frames.empty() || !frames.back().object) break;
        Frame& f = frames.back();
        const std::string& k = parsed.template get_ref<const std::string&>();
        if (++f.count > lim.max_keys)
          throw fail(fmt::format("an object has more than {} keys", lim.max_keys));
        if (!f.keys.insert(k).second) throw fail(fmt::format("the key '{}' appears twice in one object", k));
        if (root_keys && frames.size() == 1) root_keys->push_back(k);
        break;
      }
      case E::value: add_element(); break;
    }
    return true;
  };
  try {
    return Json::parse(text, cb);
  } catch (const Error&) { throw; } catch (const std::exception& e) {  // nlohmann's parse_error, or bad_alloc
    std::string why = e.what();  // without nlohmann's "[json.exception.parse_error.101] " tag
    if (why.rfind("[json.exception.", 0) == 0 && why.find("] ") != std::string::npos)
      why = why.substr(why.find("] ") + 2);
    throw fail(fmt::format("not valid JSON: {}", why));
  }
}

}  // namespace barbell::io::detail
