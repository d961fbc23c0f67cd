// Model configurations and the learning-rate schedule as SPEC states them: invalid configs
// rejected with their reason, the presets' parameter counts, warmup and cosine decay.

import Foundation
@testable import GomlCore
import XCTest

final class ConfigTests: XCTestCase {
    func testInvalidConfigsAreRejectedWithTheirReason() {
        let cases: [(ModelConfig, String)] = [
            (ModelConfig(dim: 30, layers: 1, heads: 4, ffn: 8, seqLen: 8), "not divisible by heads"),
            (ModelConfig(dim: 12, layers: 1, heads: 4, ffn: 8, seqLen: 8), "is odd"),
            (ModelConfig(dim: 16, layers: 0, heads: 4, ffn: 8, seqLen: 8), "layers is 0"),
            (ModelConfig(dim: 16, layers: 1, heads: 4, ffn: 8, seqLen: 0), "seq-len is 0"),
        ]
        for (config, reason) in cases {
            XCTAssertThrowsError(try config.validate()) { XCTAssertTrue("\($0)".contains(reason), "\($0)") }
        }
        XCTAssertNoThrow(try ModelConfig.small.validate())
    }

    func testPresetsHaveTheAnchorsParameterCounts() {
        XCTAssertEqual(ParameterLayout(.tiny).count, 132_224)
        XCTAssertEqual(ParameterLayout(.nano).count, 858_368)
        XCTAssertEqual(ParameterLayout(.small).count, 10_823_424)
        XCTAssertEqual(ModelConfig.nano.flopsPerToken / 1e6, 5.33, accuracy: 0.01)
    }

    func testScheduleFollowsSpec() {
        let s = LearningRateSchedule(maxLR: 1e-3, minLR: 1e-4, warmup: 100, totalSteps: 2000)
        XCTAssertEqual(s.rate(atStep: 1), 1e-5, accuracy: 1e-15)
        XCTAssertEqual(s.rate(atStep: 50), 5e-4, accuracy: 1e-15)
        XCTAssertEqual(s.rate(atStep: 100), 1e-3, accuracy: 1e-15)
        XCTAssertEqual(s.rate(atStep: 1050), 1e-4 + 0.5 * 9e-4, accuracy: 1e-12)
        XCTAssertEqual(s.rate(atStep: 2000), 1e-4, accuracy: 1e-15)
        XCTAssertEqual(s.rate(atStep: 2500), 1e-4, accuracy: 1e-15)
    }
}
