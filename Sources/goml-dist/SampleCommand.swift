import ArgumentParser
import Foundation
import GomlCore
import GomlIO

struct SampleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sample",
        abstract: "Generate text from a checkpoint (one process, no MPI), streaming it to stdout.")

    @Option(help: "A checkpoint file, or a training output directory (its latest checkpoint).") var ckpt: String
    @Option(help: "Text to continue (any bytes). Default: a newline.") var prompt: String = ""
    @Option(help: "Bytes to generate.") var tokens: Int = 256
    @Option(help: "Softmax temperature; 0 is greedy.") var temperature: Float = 0.8
    @Option(name: .customLong("top-k"), help: "Keep the K most likely bytes (0: all).") var topK: Int = 40
    @Option(name: .customLong("top-p"), help: "Nucleus: keep the most likely bytes up to this mass (1: all).") var topP: Float = 1
    @Option(help: "Seed of the sampler.") var seed: UInt64 = 42
    @Option(help: "BLAS threads.") var threads: Int = 1
    @Flag(name: .customLong("no-cache"), help: "Recompute the whole context for every token (slow; for comparison).") var noCache = false

    func run() throws {
        if tokens < 0 { fail("--tokens must be ≥ 0") }
        if threads <= 0 { fail("--threads must be positive") }
        let options = SamplingOptions(temperature: temperature, topK: topK, topP: topP)
        do { try options.validate() } catch { fail("\(error)") }
        BLAS.setThreads(threads)
        let model: (config: ModelConfig, step: Int, metadata: [String: String], params: [Float])
        do { model = try Checkpoint.loadModel(try Checkpoint.resolve(ckpt)) } catch { fail("\(error)") }
        let generator: TextGenerator
        do { generator = try TextGenerator(config: model.config, parameters: model.params) } catch { fail("\(error)") }
        let promptBytes = Array(prompt.utf8)
        if promptBytes.count > model.config.seqLen {
            FileHandle.standardError.write(Data("goml-dist: note: the prompt is \(promptBytes.count) bytes; the model sees only the last \(model.config.seqLen)\n".utf8))
        }
        fwrite(promptBytes, 1, promptBytes.count, stdout)
        let start = Date()
        do {
            try generator.generate(prompt: promptBytes, count: tokens, options: options, seed: seed, useCache: !noCache) { byte in
                putchar(Int32(byte))
                fflush(stdout)
            }
        } catch { fail("\(error)") }
        print("")
        fflush(stdout)
        let seconds = Date().timeIntervalSince(start)
        FileHandle.standardError.write(Data(String(format: "goml-dist: %d bytes in %.2f s (%.0f tokens/s)\n", tokens, seconds, Double(tokens) / seconds).utf8))
    }
}
