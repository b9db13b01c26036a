// The bad-input probe's runner: forks a child per registered case (a crash is counted,
// not fatal), prints one line per case, then counts per class and outcome. Exit 0 only
// when every case was Refused or Correct.
//   bad_input [--list] [--filter SUBSTRING] [--timeout SECONDS]
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <string>
#include <thread>

#include "bad_input.hpp"
#include "barbell/barbell.hpp"

namespace bad_input {

const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::Refused: return "refused";
    case Outcome::Correct: return "correct";
    case Outcome::Wrong: return "WRONG";
    case Outcome::Crash: return "CRASH";
    case Outcome::Foreign: return "FOREIGN";
    case Outcome::BadMessage: return "BADMSG";
    case Outcome::Timeout: return "TIMEOUT";
  }
  return "?";
}

std::vector<Case>& registry() {
  static std::vector<Case> r;
  return r;
}

std::string program(const char* var) {
  const char* v = std::getenv(var);
  return v ? v : "";
}

Result refuse(const std::function<void()>& f, const std::vector<std::string>& mention) {
  try {
    f();
  } catch (const barbell::Error& e) {
    const std::string msg = e.what();
    for (const std::string& m : mention)
      if (msg.find(m) == std::string::npos) return {Outcome::BadMessage, "message lacks '" + m + "': " + msg};
    return {Outcome::Refused, msg};
  } catch (const std::exception& e) {
    return {Outcome::Foreign, std::string("non-barbell exception: ") + e.what()};
  } catch (...) {
    return {Outcome::Foreign, "non-barbell exception of unknown type"};
  }
  return {Outcome::Wrong, "accepted without an error"};
}

Result compute(const std::function<bool(std::string&)>& f) {
  std::string detail;
  try {
    return {f(detail) ? Outcome::Correct : Outcome::Wrong, detail};
  } catch (const barbell::Error& e) {
    return {Outcome::Wrong, std::string("a legal input threw: ") + e.what()};
  } catch (const std::exception& e) {
    return {Outcome::Foreign, std::string("non-barbell exception: ") + e.what()};
  } catch (...) {
    return {Outcome::Foreign, "non-barbell exception of unknown type"};
  }
}

namespace {

// Runs one case in a child; the child writes "<outcome int>\n<detail>" to a pipe.
Result run_forked(const Case& c, int timeout_s) {
  int fds[2];
  if (pipe(fds) != 0) return {Outcome::Crash, "pipe() failed"};
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) return {Outcome::Crash, "fork() failed"};
  if (pid == 0) {
    close(fds[0]);
    Result r;
    try {
      r = c.run();
    } catch (const barbell::Error& e) {
      r = {Outcome::Wrong, std::string("uncaught barbell::Error: ") + e.what()};
    } catch (const std::exception& e) {
      r = {Outcome::Foreign, std::string("uncaught non-barbell exception: ") + e.what()};
    } catch (...) {
      r = {Outcome::Foreign, "uncaught exception of unknown type"};
    }
    std::string out = std::to_string(static_cast<int>(r.outcome)) + "\n" + r.detail;
    for (size_t off = 0; off < out.size();) {
      const ssize_t w = write(fds[1], out.data() + off, out.size() - off);
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
    close(fds[1]);
    std::fflush(stdout);
    _exit(0);
  }
  close(fds[1]);
  // Read while waiting (a large detail must not block the child on a full pipe).
  std::string data;
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  int status = 0;
  bool done = false, timed_out = false;
  char buf[4096];
  while (!done) {
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) data.append(buf, static_cast<size_t>(n));
    const pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      done = true;
    } else if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      timed_out = done = true;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) data.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  if (timed_out) return {Outcome::Timeout, "no result after " + std::to_string(timeout_s) + " s"};
  if (WIFSIGNALED(status)) return {Outcome::Crash, std::string("signal ") + strsignal(WTERMSIG(status))};
  const size_t nl = data.find('\n');
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || nl == std::string::npos)
    return {Outcome::Crash, "the child exited with status " + std::to_string(WEXITSTATUS(status)) +
                                " without a result (exit or abort in library code?)"};
  Result r;
  r.outcome = static_cast<Outcome>(std::atoi(data.substr(0, nl).c_str()));
  r.detail = data.substr(nl + 1);
  return r;
}

std::string one_line(std::string s, size_t max) {
  for (char& ch : s)
    if (ch == '\n' || ch == '\r') ch = ' ';
  if (s.size() > max) s = s.substr(0, max - 3) + "...";
  return s;
}

}  // namespace
}  // namespace bad_input

int main(int argc, char** argv) {
  using namespace bad_input;
  std::string filter;
  bool list = false;
  int timeout_s = 60;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--list") list = true;
    else if (a == "--filter" && i + 1 < argc) filter = argv[++i];
    else if (a == "--timeout" && i + 1 < argc) timeout_s = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--list] [--filter SUBSTRING] [--timeout SECONDS]\n", argv[0]);
      return 2;
    }
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::map<std::string, std::map<Outcome, int>> table;
  std::map<Outcome, int> totals;
  int ran = 0;
  for (const Case& c : registry()) {
    if (!filter.empty() && (c.cls + ": " + c.name).find(filter) == std::string::npos) continue;
    if (list) {
      std::printf("%s: %s\n", c.cls.c_str(), c.name.c_str());
      continue;
    }
    const Result r = run_forked(c, timeout_s);
    ++ran;
    ++table[c.cls][r.outcome];
    ++totals[r.outcome];
    std::printf("%-8s %s: %s  -- %s\n", outcome_name(r.outcome), c.cls.c_str(), c.name.c_str(),
                one_line(r.detail, 200).c_str());
  }
  if (list) return 0;
  const Outcome all[] = {Outcome::Refused, Outcome::Correct, Outcome::Wrong,     Outcome::Crash,
                         Outcome::Foreign, Outcome::BadMessage, Outcome::Timeout};
  std::printf("\n%-40s", "class");
  for (Outcome o : all) std::printf(" %8s", outcome_name(o));
  std::printf("\n");
  for (const auto& [cls, counts] : table) {
    std::printf("%-40s", one_line(cls, 40).c_str());
    for (Outcome o : all) {
      auto it = counts.find(o);
      std::printf(" %8d", it == counts.end() ? 0 : it->second);
    }
    std::printf("\n");
  }
  std::printf("%-40s", "total");
  for (Outcome o : all) std::printf(" %8d", totals[o]);
  std::printf("\n%d cases\n", ran);
  const int bad = totals[Outcome::Wrong] + totals[Outcome::Crash] + totals[Outcome::Foreign] +
                  totals[Outcome::BadMessage] + totals[Outcome::Timeout];
  return bad == 0 ? 0 : 1;
}
