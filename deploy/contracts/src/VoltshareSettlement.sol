// SPDX-License-Identifier: AGPL-3.0-or-later
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title Voltshare settlement
/// @notice Holds households' deposits of one ERC-20 token and applies each
/// interval's netted settlement batch of a Voltshare clearing engine in one
/// transaction.
///
/// A batch carries one packed 32-byte word per account (household or utility):
/// the account's address in the high 160 bits, a debit flag in bit 95 and the
/// amount's magnitude in bits 0..94, in the token's smallest unit (the
/// engine's micro-units). Per-account net amounts go on-chain, never
/// per-trade transfers: that is what keeps settlement near 1,000–2,000 gas per
/// trade instead of an ERC-20 transfer per trade.
///
/// Balances are signed. A batch is never refused because one household's
/// deposit is short: settlement of an interval must not depend on every
/// neighbour having topped up. A negative balance is a debt to the microgrid,
/// repaid by a later deposit; only a positive balance can be withdrawn.
///
/// For each (grid, interval) the contract stores one word: the keccak-256 of
/// the batch's four 32-byte roots (orders, trades, readings and the batch's
/// own hash, which names the previous batch). The four words themselves are
/// in the `BatchSettled` event. Storing one word instead of four saves
/// 66,300 gas per batch; a verifier recomputes the roots, hashes them and
/// compares with `batchDigest` (see `digestOf`).
contract VoltshareSettlement is AccessControl, Pausable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// May call `settle`: the clearing engine's settler key.
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    /// May pause and unpause: the operator.
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    uint256 private constant DEBIT = uint256(1) << 95;
    uint256 private constant MAGNITUDE = DEBIT - 1;

    /// The settlement currency.
    IERC20 public immutable token;

    /// Net balance per account, in the token's smallest unit.
    mapping(address account => int256) public balanceOf;
    /// keccak-256 of the roots of the batch settled for (grid, interval); zero
    /// while none is.
    mapping(bytes32 grid => mapping(uint64 interval => bytes32)) public batchDigest;

    /// One per account in a batch: `amount` > 0 credits, < 0 debits. The
    /// interval is in the `BatchSettled` event of the same transaction
    /// (another topic here would cost 375 gas per account).
    event Settled(address indexed account, int256 amount);
    /// One per batch, with its roots.
    event BatchSettled(
        bytes32 indexed grid,
        uint64 indexed interval,
        bytes32 ordersRoot,
        bytes32 tradesRoot,
        bytes32 readingsRoot,
        bytes32 batchHash
    );
    event Deposited(address indexed account, address indexed from, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    error AlreadySettled(bytes32 grid, uint64 interval);
    error Unbalanced(int256 sum);
    error EmptyBatchHash();
    error InsufficientBalance(int256 balance, uint256 amount);
    /// Zero, or too large to book as a signed balance.
    error BadAmount(uint256 amount);

    /// @param token_ the settlement currency
    /// @param admin grants and revokes roles (the microgrid's operator)
    /// @param settler the clearing engine's settler address
    /// @param pauser the operator who may pause
    constructor(IERC20 token_, address admin, address settler, address pauser) {
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(SETTLER_ROLE, settler);
        _grantRole(PAUSER_ROLE, pauser);
    }

    /// The digest that `batchDigest` holds for a batch with these roots.
    function digestOf(bytes32 ordersRoot, bytes32 tradesRoot, bytes32 readingsRoot, bytes32 batchHash)
        public
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(ordersRoot, tradesRoot, readingsRoot, batchHash));
    }

    /// Applies one interval's batch. Reverts if a batch for (grid, interval)
    /// was already settled, so a batch is never paid twice, whatever the
    /// sender retries; and if the amounts do not sum to exactly zero.
    function settle(
        bytes32 grid,
        uint64 interval,
        bytes32 ordersRoot,
        bytes32 tradesRoot,
        bytes32 readingsRoot,
        bytes32 batchHash,
        bytes32[] calldata entries
    ) external onlyRole(SETTLER_ROLE) whenNotPaused {
        if (batchHash == bytes32(0)) revert EmptyBatchHash();
        if (batchDigest[grid][interval] != bytes32(0)) revert AlreadySettled(grid, interval);
        batchDigest[grid][interval] = digestOf(ordersRoot, tradesRoot, readingsRoot, batchHash);
        int256 sum;
        uint256 n = entries.length;
        for (uint256 i; i < n;) {
            uint256 e = uint256(entries[i]);
            address account = address(uint160(e >> 96));
            // Unchecked: a magnitude has 95 bits, a deposit at most 128, and
            // no block holds 2^100 entries or batches, so neither a balance
            // nor the sum can come near int256's range.
            unchecked {
                int256 amount = int256(e & MAGNITUDE);
                if (e & DEBIT != 0) amount = -amount;
                balanceOf[account] += amount;
                sum += amount;
                emit Settled(account, amount);
                ++i;
            }
        }
        if (sum != 0) revert Unbalanced(sum);
        emit BatchSettled(grid, interval, ordersRoot, tradesRoot, readingsRoot, batchHash);
    }

    /// Deposits `amount` from the caller (who approved it) for `account`.
    function depositFor(address account, uint256 amount) public whenNotPaused nonReentrant {
        if (amount == 0 || amount > type(uint128).max) revert BadAmount(amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
        balanceOf[account] += int256(amount);
        emit Deposited(account, msg.sender, amount);
    }

    /// Deposits `amount` from the caller for the caller.
    function deposit(uint256 amount) external {
        depositFor(msg.sender, amount);
    }

    /// Withdraws `amount` of the caller's positive balance.
    function withdraw(uint256 amount) external whenNotPaused nonReentrant {
        if (amount == 0 || amount > type(uint128).max) revert BadAmount(amount);
        int256 balance = balanceOf[msg.sender];
        if (balance < 0 || uint256(balance) < amount) revert InsufficientBalance(balance, amount);
        balanceOf[msg.sender] = balance - int256(amount);
        token.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    /// Stops settlement, deposits and withdrawals (an emergency brake).
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }
}
