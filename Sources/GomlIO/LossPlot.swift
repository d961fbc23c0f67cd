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
    /// At most this many points per raw trace: enough for the eye, keeps the file small.
    static let maxRawPoints = 2000

    /// Writes `svg(runs:x:)` to `path` atomically (readers see the old picture or the new one).
    public static func write(runs: [RunCurves], x: PlotAxis, to path: String) throws {
        try DurableFile.write(Array(svg(runs: runs, x: x).utf8), to: path)
    }

    /// The picture, as SVG text, on the project's chart frame (SVGChart).
    public static func svg(runs: [RunCurves], x axis: PlotAxis) -> String {
        precondition(!runs.isEmpty)
        let xOf: (RunCurves.Point) -> Double = axis == .step ? { $0.step } : { $0.seconds }
        let smoothed = runs.map { movingAverage($0.train.map(\.loss)) }
        let allX = runs.flatMap { $0.train.map(xOf) + $0.validation.map(xOf) }
        let allY = runs.flatMap { $0.train.map(\.loss) + $0.validation.map(\.loss) }
        let frame = ChartFrame(xTicks: ChartFrame.niceTicks(lower: min(0, allX.min()!), upper: allX.max()!),
                               yTicks: ChartFrame.niceTicks(lower: allY.min()!, upper: allY.max()!, count: 9))
        let palette = ChartFrame.palette
        // One description when the runs share it; otherwise each run's goes into its legend row.
        let sameSummary = Set(runs.map(\.summary)).count == 1
        var s = frame.opening() + frame.titles(title(runs), subtitle: sameSummary ? runs[0].summary : "")
        s += frame.axes(x: axis == .step ? "step" : "wall time (s)", y: "loss (nats per byte)")

        // Curves: raw traces first so the smoothed lines and validation points sit on top.
        s += "<g clip-path=\"url(#plot-area)\" fill=\"none\" stroke-linejoin=\"round\">\n"
        for (i, run) in runs.enumerated() {
            let colour = palette[i % palette.count], stride = max(1, run.train.count / maxRawPoints)
            let raw = Swift.stride(from: 0, to: run.train.count, by: stride).map { run.train[$0] }
            s += "<polyline class=\"train-raw\" data-run=\"\(escape(run.name))\" stroke=\"\(colour)\" stroke-opacity=\"0.22\" stroke-width=\"1\" points=\"\(frame.points(raw.map(xOf), raw.map(\.loss)))\"/>\n"
        }
        for (i, run) in runs.enumerated() {
            let colour = palette[i % palette.count]
            s += "<polyline class=\"train-smooth\" data-run=\"\(escape(run.name))\" stroke=\"\(colour)\" stroke-width=\"2.2\" points=\"\(frame.points(run.train.map(xOf), smoothed[i]))\"/>\n"
            guard !run.validation.isEmpty else { continue }
            s += "<polyline class=\"validation\" data-run=\"\(escape(run.name))\" stroke=\"\(colour)\" stroke-width=\"2\" stroke-dasharray=\"7 4\" points=\"\(frame.points(run.validation.map(xOf), run.validation.map(\.loss)))\"/>\n"
        }
        s += "</g>\n"
        // Validation markers are not clipped: the last evaluation sits on the plot's right edge.
        for (i, run) in runs.enumerated() where !run.validation.isEmpty {
            s += "<g class=\"validation-points\" fill=\"white\" stroke=\"\(palette[i % palette.count])\" stroke-width=\"2\">"
            for p in run.validation { s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\"/>", frame.px(xOf(p)), frame.py(p.loss)) }
            s += "</g>\n"
        }

        // Legend: one row per run and series.
        var rows: [(text: String, colour: String, dash: String)] = []
        for (i, run) in runs.enumerated() {
            let colour = palette[i % palette.count]
            let described = sameSummary || run.summary.isEmpty ? run.name : "\(run.name) (\(run.summary))"
            let prefix = runs.count > 1 ? described + " — " : ""
            rows.append((prefix + "training (smoothed; raw faint)", colour, ""))
            if let last = run.validation.last {
                rows.append((prefix + String(format: "validation (last %.4f)", last.loss), colour, "7 4"))
            }
        }
        return s + frame.legend(rows) + "</svg>\n"
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

    static func escape(_ text: String) -> String { ChartFrame.escape(text) }
}
