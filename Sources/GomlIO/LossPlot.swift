// LossPlot: reads training runs' metrics.jsonl and draws their loss curves as one
// self-contained SVG (training loss smoothed over a faint raw trace, validation loss with
// markers, several runs overlaid with a legend). Reads files and renders text; trains nothing.

import Foundation

/// One run's curves, as read from OUT/metrics.jsonl (and OUT/run.json for its description).
public struct RunCurves: Sendable {
    public struct Point: Sendable, Equatable { public let step: Double, seconds: Double, loss: Double }
    public let name: String
    /// The model and options in a few words, from run.json; empty when the run did not write one.
    public let summary: String
    public let train: [Point]
    public let validation: [Point]

    /// Reads `directory`/metrics.jsonl. A last line without its newline is a record still being
    /// written and is left out; any other line that is not a step record is an error.
    public static func load(directory: String) throws -> RunCurves {
        let path = directory + "/metrics.jsonl"
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw FileError("\(directory) is not a directory: pass training output directories (train --out)")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FileError("\(directory) has no readable metrics.jsonl: pass a directory that train --out wrote")
        }
        var lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        lines.removeLast()   // after the last newline: empty, or a record still being written
        var train: [Point] = [], validation: [Point] = []
        for (index, line) in lines.enumerated() where !line.isEmpty {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                  let step = (object["step"] as? NSNumber)?.doubleValue,
                  let loss = (object["loss"] as? NSNumber)?.doubleValue else {
                throw FileError("\(path) line \(index + 1) is not a step record (a JSON object with step and loss); the file is damaged — remove that line or plot another run")
            }
            let seconds = (object["elapsed_s"] as? NSNumber)?.doubleValue ?? 0
            if loss.isFinite { train.append(Point(step: step, seconds: seconds, loss: loss)) }
            if let value = (object["val_loss"] as? NSNumber)?.doubleValue, value.isFinite {
                validation.append(Point(step: step, seconds: seconds, loss: value))
            }
        }
        guard !train.isEmpty else {
            throw FileError("\(path) holds no complete step record yet: plot it once training has logged a step")
        }
        var summary = ""
        if let json = FileManager.default.contents(atPath: directory + "/run.json"),
           let object = try? JSONSerialization.jsonObject(with: json) as? [String: Any] {
            summary = object["summary"] as? String ?? ""
        }
        let name = URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent
        return RunCurves(name: name, summary: summary, train: train, validation: validation)
    }
}

public enum PlotAxis: String, CaseIterable, Sendable {
    case step, time
}

public enum LossPlot {
    static let width = 960.0, height = 600.0
    static let left = 80.0, right = 30.0, top = 64.0, bottom = 64.0
    /// Tableau-like colours, distinguishable for most colour-blind readers.
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
    /// At most this many points per raw trace: enough for the eye, keeps the file small.
    static let maxRawPoints = 2000

    /// Writes `svg(runs:x:)` to `path` atomically (readers see the old picture or the new one).
    public static func write(runs: [RunCurves], x: PlotAxis, to path: String) throws {
        try DurableFile.write(Array(svg(runs: runs, x: x).utf8), to: path)
    }

    /// The picture, as SVG text.
    public static func svg(runs: [RunCurves], x axis: PlotAxis) -> String {
        precondition(!runs.isEmpty)
        let xOf: (RunCurves.Point) -> Double = axis == .step ? { $0.step } : { $0.seconds }
        let smoothed = runs.map { movingAverage($0.train.map(\.loss)) }
        let allX = runs.flatMap { $0.train.map(xOf) + $0.validation.map(xOf) }
        let allY = runs.flatMap { $0.train.map(\.loss) + $0.validation.map(\.loss) }
        let xTicks = niceTicks(lower: min(0, allX.min()!), upper: allX.max()!)
        let yTicks = niceTicks(lower: allY.min()!, upper: allY.max()!, count: 9)
        let (x0, x1) = (xTicks.first!, xTicks.last!), (y0, y1) = (yTicks.first!, yTicks.last!)
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        func px(_ v: Double) -> Double { left + (v - x0) / (x1 - x0) * plotWidth }
        func py(_ v: Double) -> Double { top + (1 - (v - y0) / (y1 - y0)) * plotHeight }
        func points(_ xs: [Double], _ ys: [Double]) -> String {
            zip(xs, ys).map { String(format: "%.1f,%.1f", px($0), py($1)) }.joined(separator: " ")
        }

        var s = """
        <?xml version="1.0" encoding="UTF-8"?>
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="Helvetica, Arial, sans-serif" font-size="13">
        <rect width="100%" height="100%" fill="white"/>
        <clipPath id="plot-area"><rect x="\(left)" y="\(top)" width="\(plotWidth)" height="\(plotHeight)"/></clipPath>

        """
        s += "<text class=\"title\" x=\"\(width / 2)\" y=\"26\" text-anchor=\"middle\" font-size=\"17\" font-weight=\"bold\">\(escape(title(runs)))</text>\n"
        // One description when the runs share it; otherwise each run's goes into its legend row.
        let sameSummary = Set(runs.map(\.summary)).count == 1
        let subtitle = sameSummary ? runs[0].summary : ""
        if !subtitle.isEmpty {
            s += "<text class=\"subtitle\" x=\"\(width / 2)\" y=\"46\" text-anchor=\"middle\" font-size=\"12\" fill=\"#555\">\(escape(subtitle))</text>\n"
        }
        // Grid and ticks.
        s += "<g class=\"x-axis\" stroke=\"#e6e6e6\">\n"
        for t in xTicks {
            s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", px(t), top, px(t), top + plotHeight)
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" stroke=\"none\" fill=\"#333\">", px(t), top + plotHeight + 18) + label(t) + "</text>\n"
        }
        s += "</g>\n<g class=\"y-axis\" stroke=\"#e6e6e6\">\n"
        for t in yTicks {
            s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", left, py(t), left + plotWidth, py(t))
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" stroke=\"none\" fill=\"#333\">", left - 8, py(t) + 4) + label(t) + "</text>\n"
        }
        s += "</g>\n"
        s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotWidth)\" height=\"\(plotHeight)\" fill=\"none\" stroke=\"#333\"/>\n"
        let xLabel = axis == .step ? "step" : "wall time (s)"
        s += "<text class=\"x-label\" x=\"\(left + plotWidth / 2)\" y=\"\(height - 18)\" text-anchor=\"middle\">\(xLabel)</text>\n"
        s += "<text class=\"y-label\" x=\"20\" y=\"\(top + plotHeight / 2)\" text-anchor=\"middle\" transform=\"rotate(-90 20 \(top + plotHeight / 2))\">loss (nats per byte)</text>\n"

        // Curves: raw traces first so the smoothed lines and validation points sit on top.
        s += "<g clip-path=\"url(#plot-area)\" fill=\"none\" stroke-linejoin=\"round\">\n"
        for (i, run) in runs.enumerated() {
            let colour = palette[i % palette.count], stride = max(1, run.train.count / maxRawPoints)
            let raw = Swift.stride(from: 0, to: run.train.count, by: stride).map { run.train[$0] }
            s += "<polyline class=\"train-raw\" data-run=\"\(escape(run.name))\" stroke=\"\(colour)\" stroke-opacity=\"0.22\" stroke-width=\"1\" points=\"\(points(raw.map(xOf), raw.map(\.loss)))\"/>\n"
        }
        for (i, run) in runs.enumerated() {
            let colour = palette[i % palette.count]
            s += "<polyline class=\"train-smooth\" data-run=\"\(escape(run.name))\" stroke=\"\(colour)\" stroke-width=\"2.2\" points=\"\(points(run.train.map(xOf), smoothed[i]))\"/>\n"
            guard !run.validation.isEmpty else { continue }
            s += "<polyline class=\"validation\" data-run=\"\(escape(run.name))\" stroke=\"\(colour)\" stroke-width=\"2\" stroke-dasharray=\"7 4\" points=\"\(points(run.validation.map(xOf), run.validation.map(\.loss)))\"/>\n"
        }
        s += "</g>\n"
        // Validation markers are not clipped: the last evaluation sits on the plot's right edge.
        for (i, run) in runs.enumerated() where !run.validation.isEmpty {
            s += "<g class=\"validation-points\" fill=\"white\" stroke=\"\(palette[i % palette.count])\" stroke-width=\"2\">"
            for p in run.validation { s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\"/>", px(xOf(p)), py(p.loss)) }
            s += "</g>\n"
        }

        // Legend, top right inside the plot: one row per run and series.
        var rows: [(text: String, colour: String, dashed: Bool)] = []
        for (i, run) in runs.enumerated() {
            let colour = palette[i % palette.count]
            let described = sameSummary || run.summary.isEmpty ? run.name : "\(run.name) (\(run.summary))"
            let prefix = runs.count > 1 ? described + " — " : ""
            rows.append((prefix + "training (smoothed; raw faint)", colour, false))
            if let last = run.validation.last {
                rows.append((prefix + String(format: "validation (last %.4f)", last.loss), colour, true))
            }
        }
        let legendWidth = 24 + 7.2 * Double(rows.map(\.text.count).max()!) + 16, legendHeight = Double(rows.count) * 20 + 10
        let lx = left + plotWidth - legendWidth - 10, ly = top + 10
        s += "<g class=\"legend\">\n<rect x=\"\(lx)\" y=\"\(ly)\" width=\"\(legendWidth)\" height=\"\(legendHeight)\" fill=\"white\" fill-opacity=\"0.9\" stroke=\"#bbb\"/>\n"
        for (r, row) in rows.enumerated() {
            let y = ly + 18 + Double(r) * 20
            s += "<line x1=\"\(lx + 8)\" y1=\"\(y - 4)\" x2=\"\(lx + 30)\" y2=\"\(y - 4)\" stroke=\"\(row.colour)\" stroke-width=\"2.2\"\(row.dashed ? " stroke-dasharray=\"7 4\"" : "")/>"
            s += "<text class=\"legend-entry\" x=\"\(lx + 38)\" y=\"\(y)\">\(escape(row.text))</text>\n"
        }
        s += "</g>\n</svg>\n"
        return s
    }

    static func title(_ runs: [RunCurves]) -> String {
        runs.count == 1 ? "Loss of \(runs[0].name)" : "Loss: " + runs.map(\.name).joined(separator: " vs ")
    }

    /// A centred moving average (window about 2% of the run, shrinking at the ends): unlike an
    /// exponential average it does not lag behind the raw curve where the loss falls fast.
    static func movingAverage(_ values: [Double]) -> [Double] {
        let half = min(50, values.count / 100)
        var prefix = [0.0]
        for v in values { prefix.append(prefix.last! + v) }
        return values.indices.map { i in
            let reach = min(half, i, values.count - 1 - i)
            return (prefix[i + reach + 1] - prefix[i - reach]) / Double(2 * reach + 1)
        }
    }

    /// Round tick values (1, 2 or 5 × 10ᵏ apart) covering lower...upper, about `count` of them.
    static func niceTicks(lower: Double, upper: Double, count: Int = 6) -> [Double] {
        var (lo, hi) = (lower, upper)
        if hi - lo < 1e-9 { lo -= 0.5; hi += 0.5 }
        let rough = (hi - lo) / Double(count), magnitude = pow(10, floor(log10(rough)))
        let step = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= rough }!
        let first = floor(lo / step) * step, last = ceil(hi / step) * step
        return Swift.stride(from: first, through: last + step / 2, by: step).map { ($0 / step).rounded() * step }
    }

    static func label(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e7 { return String(Int(v)) }
        return String(format: "%g", v)
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
