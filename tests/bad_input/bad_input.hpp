// The bad-input probe: cases registered from cases_*.cpp, each run in a forked child so
// that a crash is counted, not fatal. Every case says what barbell should do with its
// input: refuse it with a barbell::Error naming the op and the values, or compute the
// right answer. The runner prints one line per case and a table per class.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace bad_input {

// What happened. Refused and Correct are the good outcomes; Wrong (a silent wrong
// result, or bad input accepted without a word), Crash (a signal), Foreign (an exception
// that is not a barbell::Error), BadMessage (a barbell::Error whose message does not
// name what it should) and Timeout are failures.
enum class Outcome { Refused, Correct, Wrong, Crash, Foreign, BadMessage, Timeout };
const char* outcome_name(Outcome o);

struct Result {
  Outcome outcome = Outcome::Wrong;
  std::string detail;
};

// The input must be refused: f() must throw barbell::Error (or a subclass) whose message
// contains every string of `mention` (the op's name, the offending value, ...).
Result refuse(const std::function<void()>& f, const std::vector<std::string>& mention);
// The input is legal: f() computes and returns whether the result is right (with a
// detail for the table); an exception is a failure (Foreign, or Wrong for a
// barbell::Error: a legal input must not throw).
Result compute(const std::function<bool(std::string& detail)>& f);

struct Case {
  std::string cls;   // the class of the list, e.g. "type promotion"
  std::string name;  // what is tried, e.g. "arange(4) * 0.5"
  std::function<Result()> run;
};
std::vector<Case>& registry();
struct Registrar {
  Registrar(const char* cls, const char* name, Result (*fn)()) { registry().push_back({cls, name, fn}); }
};

// The path of a program a case may run (e.g. barbell-train), from the environment
// variable `var`; empty when not set.
std::string program(const char* var);

}  // namespace bad_input

#define BI_CAT2(a, b) a##b
#define BI_CAT(a, b) BI_CAT2(a, b)
// BAD_INPUT_CASE("class", "what is tried") { ... return bad_input::refuse(...); }
#define BAD_INPUT_CASE(cls, name)                                                                     \
  static ::bad_input::Result BI_CAT(bi_case_, __LINE__)();                                           \
  static const ::bad_input::Registrar BI_CAT(bi_reg_, __LINE__)(cls, name, &BI_CAT(bi_case_, __LINE__)); \
  static ::bad_input::Result BI_CAT(bi_case_, __LINE__)()
