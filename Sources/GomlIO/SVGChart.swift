// SVGChart: the frame every picture of the project draws the same way — background, titles,
// grid and tick labels, axis labels, legend — and a plain line chart on it, alone or as panels
// of one SVG. LossPlot draws its curves on the frame; `goml-dist plan --sweep-svg` draws line
// charts. Renders text only.

import Foundation

/// The plot area and its axes; callers add their curves between `axes` and `legend`.
public struct ChartFrame {
    public static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
    public var width = 960.0, height = 600.0
    let left = 80.0, right = 30.0, top = 64.0, bottom = 64.0
    public let xTicks: [Double], yTicks: [Double]
    /// The text under each x tick.
    public var xTickLabel: (Double) -> String = ChartFrame.label
    /// The id of the plot area's clip path (one per chart of a document).
    public var clipID = "plot-area"

    public init(xTicks: [Double], yTicks: [Double]) { self.xTicks = xTicks; self.yTicks = yTicks }

    var plotWidth: Double { width - left - right }
    var plotHeight: Double { height - top - bottom }
    public func px(_ v: Double) -> Double { left + (v - xTicks.first!) / (xTicks.last! - xTicks.first!) * plotWidth }
    public func py(_ v: Double) -> Double { top + (1 - (v - yTicks.first!) / (yTicks.last! - yTicks.first!)) * plotHeight }
    public func points(_ xs: [Double], _ ys: [Double]) -> String {
        zip(xs, ys).map { String(format: "%.1f,%.1f", px($0), py($1)) }.joined(separator: " ")
    }

    /// The document's start: the <svg> element, a white background and the plot area's clip path.
    public func opening(declaration: Bool = true) -> String {
        (declaration ? "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" : "") + """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="Helvetica, Arial, sans-serif" font-size="13">
        <rect width="100%" height="100%" fill="white"/>
        <clipPath id="\(clipID)"><rect x="\(left)" y="\(top)" width="\(plotWidth)" height="\(plotHeight)"/></clipPath>

        """
    }

    /// The title, and the subtitle under it unless empty.
    public func titles(_ title: String, subtitle: String) -> String {
        var s = "<text class=\"title\" x=\"\(width / 2)\" y=\"26\" text-anchor=\"middle\" font-size=\"17\" font-weight=\"bold\">\(Self.escape(title))</text>\n"
        if !subtitle.isEmpty {
            s += "<text class=\"subtitle\" x=\"\(width / 2)\" y=\"46\" text-anchor=\"middle\" font-size=\"12\" fill=\"#555\">\(Self.escape(subtitle))</text>\n"
        }
        return s
    }

    /// Grid lines with their tick labels, the plot's border and the axis labels.
    public func axes(x xLabel: String, y yLabel: String) -> String {
        var s = "<g class=\"x-axis\" stroke=\"#e6e6e6\">\n"
        for t in xTicks {
            s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", px(t), top, px(t), top + plotHeight)
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" stroke=\"none\" fill=\"#333\">", px(t), top + plotHeight + 18) + xTickLabel(t) + "</text>\n"
        }
        s += "</g>\n<g class=\"y-axis\" stroke=\"#e6e6e6\">\n"
        for t in yTicks {
            s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", left, py(t), left + plotWidth, py(t))
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" stroke=\"none\" fill=\"#333\">", left - 8, py(t) + 4) + Self.label(t) + "</text>\n"
        }
        s += "</g>\n"
        s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotWidth)\" height=\"\(plotHeight)\" fill=\"none\" stroke=\"#333\"/>\n"
        s += "<text class=\"x-label\" x=\"\(left + plotWidth / 2)\" y=\"\(height - 18)\" text-anchor=\"middle\">\(Self.escape(xLabel))</text>\n"
        s += "<text class=\"y-label\" x=\"20\" y=\"\(top + plotHeight / 2)\" text-anchor=\"middle\" transform=\"rotate(-90 20 \(top + plotHeight / 2))\">\(Self.escape(yLabel))</text>\n"
        return s
    }

    /// One row per series (its line solid, or dashed as `dash` says), inside the plot at its
    /// top right (or bottom left).
    public func legend(_ rows: [(text: String, colour: String, dash: String)], bottomLeft: Bool = false) -> String {
        let legendWidth = 24 + 7.2 * Double(rows.map(\.text.count).max() ?? 0) + 16, legendHeight = Double(rows.count) * 20 + 10
        let lx = bottomLeft ? left + 10 : left + plotWidth - legendWidth - 10, ly = bottomLeft ? top + plotHeight - legendHeight - 10 : top + 10
        var s = "<g class=\"legend\">\n<rect x=\"\(lx)\" y=\"\(ly)\" width=\"\(legendWidth)\" height=\"\(legendHeight)\" fill=\"white\" fill-opacity=\"0.9\" stroke=\"#bbb\"/>\n"
        for (r, row) in rows.enumerated() {
            let y = ly + 18 + Double(r) * 20
            s += "<line x1=\"\(lx + 8)\" y1=\"\(y - 4)\" x2=\"\(lx + 30)\" y2=\"\(y - 4)\" stroke=\"\(row.colour)\" stroke-width=\"2.2\"\(row.dash.isEmpty ? "" : " stroke-dasharray=\"\(row.dash)\"")/>"
            s += "<text class=\"legend-entry\" x=\"\(lx + 38)\" y=\"\(y)\">\(Self.escape(row.text))</text>\n"
        }
        return s + "</g>\n"
    }

    /// Round tick values (1, 2 or 5 × 10ᵏ apart) covering lower...upper, about `count` of them.
    public static func niceTicks(lower: Double, upper: Double, count: Int = 6) -> [Double] {
        var (lo, hi) = (lower, upper)
        if hi - lo < 1e-9 { lo -= 0.5; hi += 0.5 }
        let rough = (hi - lo) / Double(count), magnitude = pow(10, floor(log10(rough)))
        let step = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= rough }!
        let first = floor(lo / step) * step, last = ceil(hi / step) * step
        return Swift.stride(from: first, through: last + step / 2, by: step).map { ($0 / step).rounded() * step }
    }

    public static func label(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e7 { return String(Int(v)) }
        return String(format: "%g", v)
    }

    public static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}

/// Lines on a ChartFrame, each with a legend row: solid or dashed (an SVG dash array), with a
/// marker at each point.
public struct LineChart {
    public struct Series {
        public let name: String, colour: String, dash: String
        public let x: [Double], y: [Double]
        public init(name: String, colour: String, dash: String, x: [Double], y: [Double]) {
            self.name = name; self.colour = colour; self.dash = dash; self.x = x; self.y = y
        }
    }
    public var title: String, subtitle = "", xLabel: String, yLabel: String
    public var series: [Series]
    public var frame: ChartFrame

    public init(title: String, xLabel: String, yLabel: String, series: [Series], frame: ChartFrame) {
        self.title = title; self.xLabel = xLabel; self.yLabel = yLabel; self.series = series; self.frame = frame
    }

    /// The chart as an <svg> element (a whole document with `declaration`).
    public func svg(declaration: Bool = true) -> String {
        var s = frame.opening(declaration: declaration) + frame.titles(title, subtitle: subtitle) + frame.axes(x: xLabel, y: yLabel)
        s += "<g clip-path=\"url(#\(frame.clipID))\" fill=\"none\" stroke-linejoin=\"round\">\n"
        for line in series {
            s += "<polyline class=\"series\" data-name=\"\(ChartFrame.escape(line.name))\" stroke=\"\(line.colour)\" stroke-width=\"2\"\(line.dash.isEmpty ? "" : " stroke-dasharray=\"\(line.dash)\"") points=\"\(frame.points(line.x, line.y))\"/>\n"
        }
        s += "</g>\n"
        for line in series {
            s += "<g fill=\"\(line.colour)\">" + zip(line.x, line.y).map { String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\"/>", frame.px($0), frame.py($1)) }.joined() + "</g>\n"
        }
        return s + frame.legend(series.map { ($0.name, $0.colour, $0.dash) }, bottomLeft: true) + "</svg>\n"
    }

    /// Charts side by side in one document, `columns` to a row, each in its own <svg> element.
    public static func panels(_ charts: [LineChart], columns: Int) -> String {
        let w = charts.map(\.frame.width).max() ?? 0, h = charts.map(\.frame.height).max() ?? 0
        let rows = (charts.count + columns - 1) / columns
        var s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w) * columns)\" height=\"\(Int(h) * rows)\">\n"
        for (i, chart) in charts.enumerated() {
            var c = chart
            c.frame.clipID = "plot-area-\(i)"
            let body = c.svg(declaration: false)
            s += body.replacingOccurrences(of: "<svg ", with: "<svg x=\"\(Int(w) * (i % columns))\" y=\"\(Int(h) * (i / columns))\" ", options: [], range: body.range(of: "<svg "))
        }
        return s + "</svg>\n"
    }
}
