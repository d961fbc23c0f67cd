// `auto` runs bf16 only where this CPU's bf16 products beat its float32 products by the
// margin, as measured; the strategy's need for float32 comes first.

import GomlCore
@testable import GomlTrain
import XCTest

final class PrecisionChoiceTests: XCTestCase {
    func testAutoFollowsTheMeasuredSpeedOfTheProducts() throws {
        guard OneDNN.hasNativeBF16 else { throw XCTSkip("auto measures bf16 against fp32 only where the CPU has native bf16 dot products; oneDNN reports \(OneDNN.isaName)") }
        let faster = try PrecisionChoice.auto.resolve(bf16Speedup: 2)
        XCTAssertEqual(faster.precision, .bf16, faster.reason)
        XCTAssertTrue(faster.reason.contains("2.00× float32's"), faster.reason)
        let slower = try PrecisionChoice.auto.resolve(bf16Speedup: 0.52)
        XCTAssertEqual(slower.precision, .fp32, slower.reason)
        XCTAssertTrue(slower.reason.contains("only 0.52× float32's here"), slower.reason)
        XCTAssertEqual(try PrecisionChoice.auto.resolve(bf16Speedup: PrecisionChoice.bf16Margin - 0.01).precision, .fp32)
        XCTAssertEqual(try PrecisionChoice.auto.resolve(float32Reason: "exact", bf16Speedup: 2).precision, .fp32)
        XCTAssertEqual(try PrecisionChoice.bf16.resolve(bf16Speedup: 0.5).precision, .bf16, "an explicit bf16 is not second-guessed")
    }
}
