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
/// Gas is the design's main constraint (goal: at most 2,000 gas per trade
/// at 100 trades in an interval, where one ERC-20 transfer costs 34,000 to
/// 52,000). Per-account net amounts go on-chain, never per-trade transfers,
/// and the per-account cost is kept small three ways:
///
/// - **An account registry.** Every account (household or utility) gets a
///   16-bit index the first time a batch names it (`registrations`, one
///   word per new account: index in bits 160..175, address below). An entry
///   of a batch is then 8 bytes of calldata (index, debit flag, 47-bit
///   magnitude) instead of a 32-byte word with a 20-byte address. An index
///   never changes once assigned, and only `settle` assigns them, with the
///   index written out: a registration whose index is neither the next
///   free one nor the one the account already holds reverts, so a batch
///   signed against a registry that has since changed (another batch got
///   there first, a reorg) cannot credit the wrong account; the engine
///   rebuilds it.
/// - **Two balances per storage slot.** Balances are `int128`, the pair
///   (2k, 2k+1) shares slot k. The first balance of a slot that a batch
///   touches costs a cold read and a write (5,000 gas); the second costs
///   200. `balanceOf` reads them per address.
/// - **One `Settled` event per account with its index, not its address**:
///   reading the address back would cost a cold storage read per account.
///   `accountAt` and `indexOf` translate.
///
/// Balances are signed. A batch is never refused because one household's
/// deposit is short: settlement of an interval must not depend on every
/// neighbour having topped up. A negative balance is a debt to the
/// microgrid, repaid by a later deposit; only a positive balance can be
/// withdrawn. A deposit for an account that no batch has named yet is held
/// per address and moves into the registry when the account is registered.
///
/// For each (grid, interval) the contract stores one word: the keccak-256 of
/// the batch's four 32-byte roots (orders, trades, readings and the batch's
/// own hash, which names the previous batch); the four words themselves are
/// in the `BatchSettled` event of the same transaction. Storing the four
/// roots in four fresh slots would cost 3 x 22,100 = 66,300 gas more per
/// batch, 663 gas per trade at 100 trades: a third of the whole budget. The
/// digest commits to all four (a different root gives a different digest
/// unless keccak-256 collides), so a verifier that recomputes the roots from
/// the signed inputs, hashes them (`digestOf`) and compares with
/// `batchDigest` checks them against the chain's state as surely as if they
/// were stored one by one, and does not depend on the node keeping old logs.
contract VoltshareSettlement is AccessControl, Pausable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// May call `settle`: the clearing engine's settler key.
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    /// May pause and unpause: the operator.
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    /// Most accounts the registry holds: an entry's index has 16 bits.
    uint256 public constant MAX_ACCOUNTS = 1 << 16;
    /// An entry (8 bytes of `entries`, big-endian): the account's index in
    /// bits 48..63, a debit flag in bit 47, the magnitude in bits 0..46.
    uint256 private constant DEBIT = uint256(1) << 47;
    uint256 private constant MAGNITUDE = DEBIT - 1;
    uint256 private constant LOW128 = type(uint128).max;
    /// The largest deposit: keeps every balance far inside `int128`.
    uint256 public constant MAX_DEPOSIT = uint256(1) << 100;

    /// The settlement currency.
    IERC20 public immutable token;

    /// Registered accounts, by index.
    address[] private _accounts;
    /// Index + 1 of a registered account; 0 if it is not registered.
    mapping(address account => uint256) private _indexPlusOne;
    /// Slot k: balance of index 2k in the low 128 bits, of 2k+1 in the high
    /// 128 bits, each an `int128` in two's complement.
    mapping(uint256 slot => uint256) private _pairs;
    /// Deposits for accounts not registered yet.
    mapping(address account => uint256) private _unregistered;
    /// keccak-256 of the roots of the batch settled for (grid, interval); zero
    /// while none is.
    mapping(bytes32 grid => mapping(uint64 interval => bytes32)) public batchDigest;

    /// One per account in a batch: `amount` > 0 credits, < 0 debits.
    /// `account` is the registry index (`accountAt`). The interval is in the
    /// `BatchSettled` event of the same transaction.
    event Settled(uint256 indexed account, int256 amount);
    /// One per batch, with its roots.
    event BatchSettled(
        bytes32 indexed grid,
        uint64 indexed interval,
        bytes32 ordersRoot,
        bytes32 tradesRoot,
        bytes32 readingsRoot,
        bytes32 batchHash
    );
    event Registered(uint256 indexed index, address indexed account);
    event Deposited(address indexed account, address indexed from, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    error AlreadySettled(bytes32 grid, uint64 interval);
    error Unbalanced(int256 sum);
    error EmptyBatchHash();
    error InsufficientBalance(int256 balance, uint256 amount);
    /// Zero, or too large to book (see `MAX_DEPOSIT`).
    error BadAmount(uint256 amount);
    /// A registration's index is not the next free one.
    error RegistrationOutOfOrder(uint256 index, uint256 next);
    /// The account (or the zero address) cannot be registered (again).
    error CannotRegister(address account);
    /// An entry names an index no account holds.
    error UnknownAccount(uint256 index);
    /// A balance would leave `int128`.
    error BalanceOverflow(uint256 index);
    /// `entries` is not a whole number of 8-byte entries.
    error BadEntries(uint256 length);

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

    /// How many accounts are registered (the next index).
    function accountCount() external view returns (uint256) {
        return _accounts.length;
    }

    /// The account at registry index `index`.
    function accountAt(uint256 index) external view returns (address) {
        return _accounts[index];
    }

    /// The registry index + 1 of each account (0: not registered), and the
    /// next free index: what a settler needs to encode a batch.
    function indexesOf(address[] calldata accounts)
        external
        view
        returns (uint256 next, uint256[] memory indexPlusOne)
    {
        indexPlusOne = new uint256[](accounts.length);
        for (uint256 i; i < accounts.length; ++i) {
            indexPlusOne[i] = _indexPlusOne[accounts[i]];
        }
        return (_accounts.length, indexPlusOne);
    }

    /// Net balance of an account, in the token's smallest unit.
    function balanceOf(address account) public view returns (int256) {
        uint256 p = _indexPlusOne[account];
        if (p == 0) return int256(_unregistered[account]);
        return _balanceAt(p - 1);
    }

    function _balanceAt(uint256 index) private view returns (int256) {
        return int256(int128(uint128(_pairs[index >> 1] >> ((index & 1) << 7))));
    }

    /// Adds `amount` to the balance at `index`; reverts rather than wrap
    /// (the deposit cap and the 47-bit entries keep that out of reach for
    /// any realistic history).
    function _add(uint256 index, int256 amount) private {
        uint256 slot = index >> 1;
        uint256 shift = (index & 1) << 7;
        uint256 w = _pairs[slot];
        int256 b = int256(int128(uint128(w >> shift))) + amount;
        // An explicit conversion to int128 would truncate silently.
        if (b > type(int128).max || b < type(int128).min) revert BalanceOverflow(index);
        _pairs[slot] = (w & ~(LOW128 << shift)) | (uint256(uint128(int128(b))) << shift);
    }

    /// Registers one account at the index the word names. Naming an account
    /// at the index it already holds is a no-op, so batches planned against
    /// the same registry while earlier ones are still in flight agree.
    function _register(uint256 word) private {
        address account = address(uint160(word));
        uint256 index = word >> 160;
        uint256 held = _indexPlusOne[account];
        if (held != 0) {
            if (held - 1 != index) revert CannotRegister(account);
            return;
        }
        uint256 next = _accounts.length;
        if (index != next) revert RegistrationOutOfOrder(index, next);
        if (account == address(0) || next >= MAX_ACCOUNTS) revert CannotRegister(account);
        _accounts.push(account);
        _indexPlusOne[account] = next + 1;
        uint256 deposited = _unregistered[account];
        if (deposited != 0) {
            delete _unregistered[account];
            _add(next, int256(deposited));
        }
        emit Registered(next, account);
    }

    /// Applies one interval's batch. Reverts if a batch for (grid, interval)
    /// was already settled, so a batch is never paid twice, whatever the
    /// sender retries; if the amounts do not sum to exactly zero; and if a
    /// registration or an entry does not fit the registry.
    /// @param registrations accounts this batch registers, in index order
    /// (index in bits 160..175, address below)
    /// @param entries 8 bytes per account (see `DEBIT`)
    function settle(
        bytes32 grid,
        uint64 interval,
        bytes32 ordersRoot,
        bytes32 tradesRoot,
        bytes32 readingsRoot,
        bytes32 batchHash,
        uint256[] calldata registrations,
        bytes calldata entries
    ) external onlyRole(SETTLER_ROLE) whenNotPaused {
        if (batchHash == bytes32(0)) revert EmptyBatchHash();
        if (batchDigest[grid][interval] != bytes32(0)) revert AlreadySettled(grid, interval);
        batchDigest[grid][interval] = digestOf(ordersRoot, tradesRoot, readingsRoot, batchHash);
        for (uint256 i; i < registrations.length; ++i) {
            _register(registrations[i]);
        }
        uint256 len = entries.length;
        if (len % 8 != 0) revert BadEntries(len);
        uint256 count = _accounts.length;
        int256 sum;
        for (uint256 off; off < len; off += 8) {
            uint256 e;
            assembly {
                e := shr(192, calldataload(add(entries.offset, off)))
            }
            uint256 index = e >> 48;
            if (index >= count) revert UnknownAccount(index);
            int256 amount = int256(e & MAGNITUDE);
            if (e & DEBIT != 0) amount = -amount;
            _add(index, amount);
            // Unchecked: at most 2^16 magnitudes below 2^47 each.
            unchecked {
                sum += amount;
            }
            emit Settled(index, amount);
        }
        if (sum != 0) revert Unbalanced(sum);
        emit BatchSettled(grid, interval, ordersRoot, tradesRoot, readingsRoot, batchHash);
    }

    /// Deposits `amount` from the caller (who approved it) for `account`.
    function depositFor(address account, uint256 amount) public whenNotPaused nonReentrant {
        if (amount == 0 || amount > MAX_DEPOSIT) revert BadAmount(amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 p = _indexPlusOne[account];
        if (p == 0) {
            uint256 held = _unregistered[account] + amount;
            if (held > MAX_DEPOSIT) revert BadAmount(amount);
            _unregistered[account] = held;
        } else {
            _add(p - 1, int256(amount));
        }
        emit Deposited(account, msg.sender, amount);
    }

    /// Deposits `amount` from the caller for the caller.
    function deposit(uint256 amount) external {
        depositFor(msg.sender, amount);
    }

    /// Withdraws `amount` of the caller's positive balance.
    function withdraw(uint256 amount) external whenNotPaused nonReentrant {
        if (amount == 0 || amount > MAX_DEPOSIT) revert BadAmount(amount);
        int256 balance = balanceOf(msg.sender);
        if (balance < 0 || uint256(balance) < amount) revert InsufficientBalance(balance, amount);
        uint256 p = _indexPlusOne[msg.sender];
        if (p == 0) {
            _unregistered[msg.sender] = uint256(balance) - amount;
        } else {
            _add(p - 1, -int256(amount));
        }
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
