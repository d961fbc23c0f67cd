// `goml-dist plot`: training runs' loss curves as one SVG (GomlIO's LossPlot draws it).

import ArgumentParser
import GomlIO

struct PlotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plot",
        abstract: "Draw the loss curves of one or more training runs (their --out directories) as an SVG.")

    @Argument(help: "Training output directories (each with a metrics.jsonl).") var runs: [String]
    @Option(help: "The SVG to write.") var out: String = "loss.svg"
    @Option(help: "Horizontal axis: step or time (wall-clock seconds).") var x: String = "step"

    func validate() throws {
        if runs.isEmpty { throw ValidationError("give at least one run directory, e.g. goml-dist plot out/demo") }
        if PlotAxis(rawValue: x) == nil { throw ValidationError("unknown --x '\(x)': use step or time") }
    }

    func run() throws {
        do {
            let curves = try runs.map { try RunCurves.load(directory: $0) }
            try LossPlot.write(runs: curves, x: PlotAxis(rawValue: x)!, to: out)
            print("wrote \(out): \(curves.map { "\($0.name) (\($0.train.count) steps, \($0.validation.count) evaluations)" }.joined(separator: ", "))")
        } catch {
            fail("\(error)")
        }
    }
}
