// ScalingSweep: docs/scaling.svg — the plan's predicted efficiency from 2 to 1,024 hosts at
// 1, 10 and 100 Gbit/s, the sharded default against DiLoCo at H 10 and 50, one panel per
// model (a preset's `bench` line gives its compute; each host trains that many sequences on
// one rank). Drawn with GomlIO's LineChart (`goml-dist plan --sweep-svg`).

import Foundation
import GomlCore
import GomlIO

public enum ScalingSweep {
    public static let hosts = (1...10).map { 1 << $0 }
    public static let links = [1.0, 10, 100]
    public static let strategies: [(PlanStrategy, String, String)] = [
        (.synchronous(sharded: true, compression: .none), "sharded", ""),
        (.diloco(syncEvery: 10), "DiLoCo H 10", "7 4"), (.diloco(syncEvery: 50), "DiLoCo H 50", "2 3"),
    ]

    /// The figure's SVG, one panel per calibration (the last JSON line of `bench` for a preset).
    public static func svg(calibrations: [String], latencySeconds: Double, gatherBytesInFlight: Int) throws -> String {
        guard !calibrations.isEmpty else { throw ConfigError("--sweep-svg draws one panel per --calibration FILE (a preset's goml-dist bench line); give at least one") }
        let charts = try calibrations.map { path -> LineChart in
            let c = try PlanCompute.calibration(path, name: nil, model: nil)
            guard let model = try? ModelConfig.preset(named: c.config) else {
                throw ConfigError("--calibration \(path) is for \(c.config); the sweep plans presets: calibrate one (goml-dist bench --config small …)")
            }
            let costs = PlanCosts()
            var series: [LineChart.Series] = []
            for (l, gbit) in links.enumerated() {
                for (strategy, name, dash) in strategies {
                    let efficiency = hosts.map { h -> Double in
                        var inputs = PlanInputs(model: model, name: c.config, batch: c.compute.batch * h, topology: PlanTopology(hosts: h, ranksPerHost: 1),
                                                threads: c.threads, link: LinkModel(gbitPerSecond: gbit, latencySeconds: latencySeconds),
                                                linkSource: "sweep", compute: c.compute, gatherBytesInFlight: gatherBytesInFlight)
                        inputs.syncEvery = []
                        return ScalingPlan.predict(inputs, strategy, costs: costs).efficiency
                    }
                    series.append(.init(name: "\(name), \(String(format: "%g", gbit)) Gbit/s", colour: ChartFrame.palette[l], dash: dash,
                                        x: hosts.map { log2(Double($0)) }, y: efficiency))
                }
            }
            var frame = ChartFrame(xTicks: hosts.map { log2(Double($0)) }, yTicks: ChartFrame.niceTicks(lower: 0, upper: max(1, series.flatMap(\.y).max()!), count: 5))
            frame.width = 800
            frame.xTickLabel = { String(Int(pow(2, $0).rounded())) }
            var chart = LineChart(title: "Predicted efficiency: \(c.config) (\(model.summary))", xLabel: "hosts (one rank each)",
                                  yLabel: "efficiency against one rank alone", series: series, frame: frame)
            chart.subtitle = String(format: "%d sequence(s) per host, %d thread(s), %@ compute of %@; latency %.0f µs",
                                    c.compute.batch, c.threads, c.compute.precision.rawValue, URL(fileURLWithPath: path).lastPathComponent, latencySeconds * 1e6)
            return chart
        }
        return LineChart.panels(charts, columns: 2)
    }

    public static func write(calibrations: [String], latencySeconds: Double, gatherBytesInFlight: Int, to path: String) throws {
        try DurableFile.write(Array(svg(calibrations: calibrations, latencySeconds: latencySeconds, gatherBytesInFlight: gatherBytesInFlight).utf8), to: path)
    }
}
