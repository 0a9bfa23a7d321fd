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
#include "svg_chart.h"

namespace flashgpt::cli {

namespace {

struct PlotCli {
  std::string metrics, output;
};

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
