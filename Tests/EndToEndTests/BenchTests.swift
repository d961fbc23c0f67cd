// bench's figures: MFU is quoted against the peak of the precision that runs and lies in
// (0, 100%]; `config` names the preset only when nothing overrides it.

import Foundation
import XCTest

final class BenchTests: XCTestCase {
    /// The JSON last line of `goml-dist bench ARGS`.
    func benchJSON(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let r = Harness.goml(["bench", "--single", "--warmup", "1", "--steps", "3"] + arguments, timeout: 300)
        Harness.assertSuccess(r, "bench \(arguments.joined(separator: " "))", file: file, line: line)
        let last = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any], "no JSON last line:\n\(r.stdout)")
    }

    func assertMFUQuotedAgainstPeak(of precision: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let json = try benchJSON(["--config", "tiny", "--precision", precision], file: file, line: line)
        XCTAssertEqual(json["precision"] as? String, precision, file: file, line: line)
        XCTAssertEqual(json["peak_precision"] as? String, precision, "\(json)", file: file, line: line)
        let peak = try XCTUnwrap(json["peak_gflops"] as? Double), mfu = try XCTUnwrap(json["mfu"] as? Double, "\(json)")
        XCTAssertGreaterThan(peak, 0, file: file, line: line)
        XCTAssertGreaterThan(mfu, 0, file: file, line: line)
        XCTAssertLessThanOrEqual(mfu, 1, "an MFU above 100% means the peak is wrong: \(json)", file: file, line: line)
    }

    func testFP32MFUIsQuotedAgainstTheSgemmPeak() throws {
        try assertMFUQuotedAgainstPeak(of: "fp32")
    }

    func testBF16MFUIsQuotedAgainstTheBF16Peak() throws {
        try Harness.requireNativeBF16()
        try assertMFUQuotedAgainstPeak(of: "bf16")
    }

    func testConfigNamesThePresetOnlyWhenNothingIsOverridden() throws {
        XCTAssertEqual(try benchJSON(["--config", "tiny", "--precision", "fp32"])["config"] as? String, "tiny")
        XCTAssertEqual(try benchJSON(["--config", "tiny", "--dim", "32", "--precision", "fp32"])["config"] as? String,
                       "C32 L2 H4 F172 T64 V256 swiglu")
    }

    /// `bench --optimizer`: one row per thread count up to --threads, each with AdamW's and the
    /// triad's bandwidth and their ratio.
    func testOptimizerBenchReportsAdamWAgainstTheMeasuredBandwidth() throws {
        let json = try benchJSON(["--config", "tiny", "--optimizer", "--threads", "2"])
        XCTAssertEqual(json["parameters"] as? Int, 132_224, "\(json)")
        let rows = try XCTUnwrap(json["optimizer"] as? [[String: Any]], "\(json)")
        XCTAssertEqual(rows.compactMap { $0["threads"] as? Int }, [1, 2], "\(json)")
        for row in rows {
            let adamW = try XCTUnwrap(row["adamw_gbps"] as? Double, "\(row)"), stream = try XCTUnwrap(row["stream_gbps"] as? Double, "\(row)")
            XCTAssertGreaterThan(adamW, 0, "\(row)")
            XCTAssertGreaterThan(stream, 0, "\(row)")
            XCTAssertEqual(try XCTUnwrap(row["share"] as? Double), adamW / stream, accuracy: 0.01 * adamW / stream + 0.002, "\(row)")
        }
    }
}
