// A minimal SVG line chart shared by `flashgpt plot` and `flashgpt bench attention --plot`.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace flashgpt::cli {

struct Series {
  std::vector<double> x, y;
};

struct Panel {
  double left, top, width, height;
};

inline std::string nice(double v) {
  if (v == 0) return "0";
  if (std::abs(v) < 1e-2 || std::abs(v) >= 1e5) return fmt::format("{:.1e}", v);
  return fmt::format("{:.3g}", v);
}

inline void draw_panel(std::ostringstream& svg, const Panel& p, const std::string& title,
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
  double legend_y = p.top + 16;
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
    svg << fmt::format(R"(<text x="{}" y="{}" font-size="12" fill="{}">— {}</text>)", p.left + p.width - 140, legend_y,
                       color, label)
        << "\n";
    legend_y += 15;
  }
}


}  // namespace flashgpt::cli
