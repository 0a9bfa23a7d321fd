// flashgpt plot: the metrics JSONL of a run as an SVG chart (loss and validation loss above, the
// learning rate below), viewable in any browser.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <sstream>

#include "commands.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/io.h"

namespace flashgpt::cli {

namespace {

struct PlotCli {
  std::string metrics, output;
};

struct Series {
  std::vector<double> x, y;
};

struct Panel {
  double left, top, width, height;
};

std::string nice(double v) {
  if (v == 0) return "0";
  if (std::abs(v) < 1e-2 || std::abs(v) >= 1e5) return fmt::format("{:.1e}", v);
  return fmt::format("{:.3g}", v);
}

void draw_panel(std::ostringstream& svg, const Panel& p, const std::string& title,
                const std::vector<std::pair<const Series*, std::string>>& series, double x_max) {
  double y_min = INFINITY, y_max = -INFINITY;
  for (auto& [s, color] : series)
    for (double y : s->y) {
      y_min = std::min(y_min, y);
      y_max = std::max(y_max, y);
    }
  if (!std::isfinite(y_min)) {
    y_min = 0;
    y_max = 1;
  }
  if (y_max - y_min < 1e-12) y_max = y_min + 1;
  const double pad = 0.05 * (y_max - y_min);
  y_min -= pad;
  y_max += pad;
  auto X = [&](double x) { return p.left + p.width * x / std::max(x_max, 1.0); };
  auto Y = [&](double y) { return p.top + p.height * (1 - (y - y_min) / (y_max - y_min)); };
  svg << fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#444"/>)", p.left, p.top,
                     p.width, p.height)
      << "\n";
  svg << fmt::format(R"(<text x="{}" y="{}" font-size="14" font-weight="bold">{}</text>)", p.left, p.top - 8, title)
      << "\n";
  for (int i = 0; i <= 4; ++i) {
    const double yv = y_min + (y_max - y_min) * i / 4, xv = x_max * i / 4;
    svg << fmt::format(R"(<line x1="{0}" x2="{1}" y1="{2}" y2="{2}" stroke="#ddd"/>)", p.left, p.left + p.width, Y(yv))
        << fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>)", p.left - 4, Y(yv) + 4,
                       nice(yv))
        << fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>)", X(xv),
                       p.top + p.height + 14, nice(std::round(xv)))
        << "\n";
  }
  double legend_x = p.left + p.width - 150;
  for (auto& [s, label_color] : series) {
    const auto sep = label_color.find('|');
    const std::string label = label_color.substr(0, sep), color = label_color.substr(sep + 1);
    if (s->x.empty()) continue;
    std::string points;
    for (size_t i = 0; i < s->x.size(); ++i) points += fmt::format("{:.1f},{:.1f} ", X(s->x[i]), Y(s->y[i]));
    svg << fmt::format(R"(<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>)", color, points) << "\n";
    if (s->x.size() < 40)
      for (size_t i = 0; i < s->x.size(); ++i)
        svg << fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="{}"/>)", X(s->x[i]), Y(s->y[i]), color);
    svg << fmt::format(R"(<text x="{}" y="{}" font-size="12" fill="{}">— {}</text>)", legend_x, p.top + 16, color, label)
        << "\n";
    legend_x += 75;
  }
}

void run_plot(const PlotCli& c) {
  std::istringstream in(read_text_file(c.metrics));
  Series loss, val, lr;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      fail("{}:{}: not a JSON object", c.metrics, line_no);
    }
    FLASHGPT_CHECK(j.is_object() && j.contains("step"), "{}:{}: a metrics line needs a \"step\"", c.metrics, line_no);
    const double step = j["step"].get<double>();
    if (j.contains("loss")) {
      loss.x.push_back(step);
      loss.y.push_back(j["loss"].get<double>());
    }
    if (j.contains("lr")) {
      lr.x.push_back(step);
      lr.y.push_back(j["lr"].get<double>());
    }
    if (j.contains("val_loss")) {
      val.x.push_back(step);
      val.y.push_back(j["val_loss"].get<double>());
    }
  }
  FLASHGPT_CHECK(!loss.x.empty() || !val.x.empty(), "{}: no loss values to plot", c.metrics);
  double x_max = 1;
  for (const Series* s : {&loss, &val, &lr})
    for (double x : s->x) x_max = std::max(x_max, x);
  std::ostringstream svg;
  svg << R"(<svg xmlns="http://www.w3.org/2000/svg" width="900" height="620" font-family="sans-serif">)" << "\n"
      << R"(<rect width="100%" height="100%" fill="white"/>)" << "\n";
  draw_panel(svg, {70, 40, 800, 340}, "loss", {{&loss, "train|#1f77b4"}, {&val, "val|#d62728"}}, x_max);
  draw_panel(svg, {70, 440, 800, 140}, "learning rate", {{&lr, "lr|#2ca02c"}}, x_max);
  svg << R"(<text x="470" y="612" font-size="12" text-anchor="middle">step</text>)" << "\n</svg>\n";
  write_text_file_atomic(c.output, svg.str());
  std::printf("wrote %s (%zu train points, %zu val points)\n", c.output.c_str(), loss.x.size(), val.x.size());
}

}  // namespace

void register_plot(CLI::App& app) {
  auto c = std::make_shared<PlotCli>();
  CLI::App* sub = app.add_subcommand("plot", "Plot a run's metrics.jsonl as an SVG chart");
  sub->add_option("metrics", c->metrics, "metrics.jsonl written by `flashgpt train`")->required()->check(CLI::ExistingFile);
  sub->add_option("-o,--out", c->output, "Output SVG file")->required();
  sub->callback([c] { run_plot(*c); });
}

}  // namespace flashgpt::cli
