// `goml-dist plot` on real runs (the SVG parses, one curve per run and series, labelled axes)
// and on bad inputs (one clear line, non-zero exit, no picture written).

import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest

/// The elements of an SVG that the tests look at.
private final class SVGSummary: NSObject, XMLParserDelegate {
    var curves: [(kind: String, run: String, points: Int)] = []
    var texts: [String: String] = [:]   // class → text
    private var textClass: String?

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                attributes: [String: String] = [:]) {
        if name == "polyline", let kind = attributes["class"], let run = attributes["data-run"] {
            curves.append((kind, run, (attributes["points"] ?? "").split(separator: " ").count))
        }
        textClass = name == "text" ? attributes["class"] : nil
    }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        textClass = nil
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        if let textClass { texts[textClass, default: ""] += string }
    }

    static func parse(_ path: String) -> SVGSummary? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let parser = XMLParser(data: data), summary = SVGSummary()
        parser.delegate = summary
        return parser.parse() ? summary : nil
    }
}

final class PlotTests: XCTestCase {
    /// Two short real runs with validation losses, A and B (another learning rate).
    static let runs: (String, String) = {
        let root = Harness.temporaryDirectory("plot")
        for (name, lr) in [("runA", "1e-3"), ("runB", "3e-3")] {
            let r = Harness.goml(Harness.tinyTrain(root + "/" + name, steps: 30, batch: 4, evalEvery: 10, extra: ["--single", "--lr", lr]), timeout: 300)
            Harness.assertSuccess(r, "train \(name)")
        }
        return (root + "/runA", root + "/runB")
    }()

    func testPlotsTwoRealRunsOverlaid() throws {
        let (a, b) = Self.runs
        let out = Harness.temporaryDirectory("plot-out") + "/both.svg"
        let r = Harness.goml(["plot", a, b, "--out", out], timeout: 60)
        Harness.assertSuccess(r, "plot")
        let svg = try XCTUnwrap(SVGSummary.parse(out), "the SVG must parse as XML")
        for kind in ["train-raw", "train-smooth", "validation"] {
            let curves = svg.curves.filter { $0.kind == kind }
            XCTAssertEqual(curves.map(\.run).sorted(), ["runA", "runB"], "one \(kind) curve per run")
        }
        // 30 training steps per run; validation at steps 10, 20 and 30.
        XCTAssertEqual(svg.curves.filter { $0.kind == "train-smooth" }.map(\.points), [30, 30])
        XCTAssertEqual(svg.curves.filter { $0.kind == "validation" }.map(\.points), [3, 3])
        XCTAssertEqual(svg.texts["x-label"], "step")
        XCTAssertEqual(svg.texts["y-label"], "loss (nats per byte)")
        XCTAssertTrue(svg.texts["title"]?.contains("runA") == true && svg.texts["title"]?.contains("runB") == true, "\(svg.texts)")
        // The runs differ (lr), so each legend entry names its run's model and options.
        let legend = svg.texts["legend-entry"] ?? ""
        XCTAssertTrue(legend.contains("C64 L2") && legend.contains("lr 0.001") && legend.contains("lr 0.003"), legend)

        let timed = Harness.goml(["plot", a, "--x", "time", "--out", out], timeout: 60)
        Harness.assertSuccess(timed, "plot --x time")
        let single = try XCTUnwrap(SVGSummary.parse(out))
        XCTAssertEqual(single.texts["x-label"], "wall time (s)")
        XCTAssertTrue(single.texts["subtitle"]?.contains("C64 L2") == true, "one run: its config in the subtitle: \(single.texts)")
    }

    func testTrainingWritesItsOwnPlot() throws {
        let (a, _) = Self.runs
        let svg = try XCTUnwrap(SVGSummary.parse(a + "/loss.svg"), "train writes OUT/loss.svg")
        XCTAssertEqual(svg.curves.filter { $0.kind == "train-smooth" }.map(\.points), [30])
    }

    /// Runs `plot` on `directory` and expects one error line containing `expected`, and no SVG.
    private func assertPlotFails(_ directory: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        let out = Harness.temporaryDirectory("plot-bad") + "/x.svg"
        let r = Harness.goml(["plot", directory, "--out", out], timeout: 60)
        XCTAssertEqual(r.status, 1, r.output, file: file, line: line)
        XCTAssertFalse(r.timedOut, file: file, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "one-line error expected: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.contains(expected), r.stderr, file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "nothing written on error", file: file, line: line)
    }

    func testBadInputsAreOneLineErrors() throws {
        let (a, _) = Self.runs
        let records = try String(contentsOfFile: a + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map(String.init)
        func run(with metrics: String) -> String {
            let dir = Harness.temporaryDirectory("plot-run")
            FileManager.default.createFile(atPath: dir + "/metrics.jsonl", contents: Data(metrics.utf8))
            return dir
        }
        assertPlotFails(Harness.temporaryDirectory("nothing") + "/missing", "is not a directory")
        assertPlotFails(Harness.temporaryDirectory("no-metrics"), "has no readable metrics.jsonl")
        assertPlotFails(run(with: ""), "holds no complete step record")
        assertPlotFails(run(with: records[0] + "\n{\"step\": 2, \"lo\n" + records[2] + "\n"), "line 2 is not a step record")
        assertPlotFails(run(with: "[1, 2, 3]\n"), "line 1 is not a step record")

        let wrongAxis = Harness.goml(["plot", a, "--x", "tokens"], timeout: 60)
        XCTAssertEqual(wrongAxis.status, 64, wrongAxis.output)   // the argument parser's usage error
        XCTAssertTrue(wrongAxis.stderr.contains("use step or time"), wrongAxis.stderr)
    }

    func testARunStillWritingIsPlottedUpToItsLastCompleteRecord() throws {
        let (a, _) = Self.runs
        let records = try String(contentsOfFile: a + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map(String.init)
        let dir = Harness.temporaryDirectory("plot-partial")
        let partial = records[0..<12].joined(separator: "\n") + "\n" + records[12].prefix(20)
        FileManager.default.createFile(atPath: dir + "/metrics.jsonl", contents: Data(partial.utf8))
        let out = dir + "/loss.svg"
        let r = Harness.goml(["plot", dir, "--out", out], timeout: 60)
        Harness.assertSuccess(r, "plot of a partial file")
        XCTAssertEqual(SVGSummary.parse(out)?.curves.filter { $0.kind == "train-smooth" }.map(\.points), [12])
    }
}
